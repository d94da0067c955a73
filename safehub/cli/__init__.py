"""The ``safehub`` command. Each subcommand lives in its own module.

Exit codes: 0 clean or allowed, 1 findings or denied, 2 error (usage, unreadable
input, invalid policy, nothing scanned), 130 interrupted (Ctrl-C). stdout carries
only the report; logs, progress and the summary go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from safehub import __version__
from safehub._format.escape import Block, escape_block, escape_line
from safehub.cli._common import EXIT_ERROR, EXIT_FINDINGS, EXIT_INTERRUPTED
from safehub.errors import (
    IntegrityError,
    PolicyViolation,
    SafehubError,
    SandboxError,
    UnsafeModel,
)

__all__ = ["main"]

# Subcommand -> its module in safehub.cli, in the order `safehub --help` lists them. (`list`
# and `help` live in hub_*.py: a submodule named like a builtin would shadow it here.)
_COMMANDS = {"scan": "scan", "load": "load", "list": "hub_list", "help": "hub_help",
             "policy": "policy", "verify": "verify", "sign": "sign", "lock": "lock",
             "doctor": "doctor", "audit": "audit", "convert": "convert"}


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one escaped line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: usage error: {escape_line(message)} "
                         f"(see '{self.prog} --help')\n")
        raise SystemExit(EXIT_ERROR)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; given the subcommand being run, only that one is imported, so that
    `safehub scan` does not pay for the policy engine's or the signer's imports."""
    parser = _Parser(
        prog="safehub",
        description="Use third-party PyTorch models without handing strangers code execution.",
    )
    parser.add_argument("--version", action="version", version=f"safehub {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="only errors on stderr; no text report on stdout")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="more detail: every finding, skipped files, debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [command] if command in _COMMANDS else _COMMANDS:
        importlib.import_module(f"safehub.cli.{_COMMANDS[name]}").register(sub)
    return parser


def _configure_logging(quiet: bool, verbose: bool) -> None:
    from safehub._format.escape import LogFormatter
    from safehub._progress import on_terminal

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(clear_line=on_terminal(sys.stderr)))
    root = logging.getLogger("safehub")
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _sandbox_exit(exc: SandboxError) -> int:
    """The sandbox refusing or containing the code (limits, violations, failing or bad
    results, a missing required layer) exits 1; the sandbox itself failing exits 2."""
    from safehub._sandbox.errors import SandboxFailure

    return EXIT_ERROR if type(exc) is SandboxFailure else EXIT_FINDINGS


# Subcommands that run PyTorch (in the sandbox or here); the others never import it.
_NEEDS_TORCH = {"load": "safehub load", "list": "safehub list", "help": "safehub help",
                "convert": "safehub convert"}


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an unusable report or tensor target before any work is done."""
    from safehub.cli._output import check_target

    if (getattr(args, "output", None) is not None and hasattr(args, "format")
            and args.command != "convert"):
        check_target(args.output, flag="-o")
    if args.command == "load" and getattr(args, "out", None) is not None:
        check_target(args.out, flag="--out")
    if args.command == "audit" and getattr(args, "fix", False) and args.quarantine is not None:
        from safehub.cli._output import check_folder

        check_folder(args.quarantine, flag="--quarantine")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the library itself never exits)."""
    # Global options are accepted before or after the subcommand.
    args_list = list(sys.argv[1:] if argv is None else argv)
    hoisted = [a for a in args_list if a in ("-q", "--quiet", "-v", "--verbose")]
    rest = [a for a in args_list if a not in hoisted]
    # No global option takes a value, so the first non-option word names the subcommand.
    parser = _parser(next((a for a in rest if not a.startswith("-")), None))
    try:
        args = parser.parse_args(hoisted + rest)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    _configure_logging(args.quiet, args.verbose)
    log = logging.getLogger("safehub")
    try:
        if args.command in _NEEDS_TORCH:
            from safehub._torchdep import require_torch

            require_torch(_NEEDS_TORCH[args.command])
        _check_outputs(args)
        if args.command in _NEEDS_TORCH and hasattr(args, "repo"):
            from safehub._hub.warm import prestart

            prestart(args.repo, args.source)  # the zygote first; the rest overlaps its start
        return int(args.run(args))
    except (PolicyViolation, UnsafeModel, IntegrityError) as exc:
        log.error("%s", Block(exc.diagnostics(surface="cli")))
        return EXIT_FINDINGS
    except SandboxError as exc:
        log.error("%s", Block(exc.diagnostics(surface="cli")))
        return _sandbox_exit(exc)
    except SafehubError as exc:
        log.error("%s", Block(exc.diagnostics(surface="cli")))
        return EXIT_ERROR
    except KeyboardInterrupt:
        # As shells report SIGINT (128 + 2); reports are written atomically, so nothing
        # half-written is left behind.
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception:  # the one catch-all: an internal error is never a clean exit
        log.error("internal error (please report it):\n%s",
                  Block("\n".join(escape_block(traceback.format_exc(), indent="  "))))
        return EXIT_ERROR
