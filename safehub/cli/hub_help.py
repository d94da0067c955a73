"""``safehub help``: an entrypoint's docstring, read by importing hubconf.py in the sandbox."""

from __future__ import annotations

import argparse
import sys

from safehub.cli._common import EXIT_OK
from safehub.cli._hubargs import add_repo_options, policy_for

__all__ = ["register"]

HELP = "show the docstring of a torch.hub entrypoint (hubconf.py imported in the sandbox)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("help", help=HELP, description=HELP + ". Exit 0 on success, 1 when the "
                       "policy or the sandbox refused, 2 on error.")
    add_repo_options(p)
    p.add_argument("entry", metavar="ENTRY", help="the entrypoint in hubconf.py")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from safehub._hub.runner import HubCall, run_hub_call
    from safehub.sandbox import Operation

    call = HubCall(args.repo, Operation.HELP, args.entry, source=args.source,
                   trust_repo=True if args.trust_repo else None, force_reload=args.force_reload,
                   trust_nested=tuple(args.trust_nested))
    doc = run_hub_call(call, policy_for(args)).doc or ""
    sys.stdout.write(doc if doc.endswith("\n") or not doc else doc + "\n")
    return EXIT_OK
