"""``safehub list``: a repository's entrypoints, found by importing hubconf.py in the sandbox."""

from __future__ import annotations

import argparse
import json

from safehub._format.escape import escape_line, inert_json, json_text
from safehub.cli._common import EXIT_OK
from safehub.cli._hubargs import add_repo_options, run_call
from safehub.cli._output import write_stdout

__all__ = ["register"]

HELP = "list the entrypoints of a torch.hub repository (hubconf.py imported in the sandbox)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("list", help=HELP, description=HELP + ". Exit 0 on success, 1 when the "
                       "policy or the sandbox refused, 2 on error.")
    add_repo_options(p)
    p.add_argument("-f", "--format", choices=["text", "json"], default="text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from safehub._hub.runner import HubCall
    from safehub.sandbox import Operation

    call = HubCall(args.repo, Operation.LIST, source=args.source,
                   trust_repo=True if args.trust_repo else None, force_reload=args.force_reload,
                   trust_nested=tuple(args.trust_nested),
                   lockfile=args.lockfile, frozen=args.frozen)
    names = list(run_call(call, args).entrypoints)
    if args.format == "json":
        body = {"schema_version": "1", "repo": json_text(args.repo),
                "entrypoints": [json_text(n) for n in names]}
        write_stdout(inert_json(json.dumps(body, indent=2)) + "\n")
    else:
        # Names are Python identifiers (the sandbox result is refused otherwise); escaped
        # all the same, so one name is always one line.
        write_stdout("".join(f"{escape_line(name)}\n" for name in names))
    return EXIT_OK
