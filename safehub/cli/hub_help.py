"""``safehub help``: an entrypoint's docstring, read by importing hubconf.py in the sandbox."""

from __future__ import annotations

import argparse
import inspect

from safehub._format.escape import escape_block, escape_line
from safehub.cli._common import EXIT_OK
from safehub.cli._hubargs import add_repo_options, entrypoint_name, run_call
from safehub.cli._output import write_stdout

__all__ = ["register"]

HELP = "show the docstring of a torch.hub entrypoint (hubconf.py imported in the sandbox)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("help", help=HELP, description=HELP + ". Exit 0 on success, 1 when the "
                       "policy or the sandbox refused, 2 on error.")
    add_repo_options(p)
    p.add_argument("entry", metavar="ENTRY", type=entrypoint_name,
                   help="the entrypoint in hubconf.py")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from safehub._hub.runner import HubCall
    from safehub.sandbox import Operation

    call = HubCall(args.repo, Operation.HELP, args.entry, source=args.source,
                   trust_repo=True if args.trust_repo else None, force_reload=args.force_reload,
                   trust_nested=tuple(args.trust_nested),
                   lockfile=args.lockfile, frozen=args.frozen)
    doc = run_call(call, args).doc
    # The docstring is the repository's text: shown as a marked block, every line escaped,
    # so none of it can pass for a line of safehub's own.
    if not doc:
        write_stdout(f"{escape_line(args.entry)}: no docstring\n")
        return EXIT_OK
    write_stdout(f"{escape_line(args.entry)} (docstring from the repository):\n")
    write_stdout("".join(line + "\n" for line in escape_block(inspect.cleandoc(doc))))
    return EXIT_OK
