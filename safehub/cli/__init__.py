"""The ``safehub`` command. Each subcommand lives in its own module.

Exit codes: 0 clean or allowed, 1 findings or denied, 2 error (usage, unreadable
input, invalid policy, nothing scanned), 130 interrupted (Ctrl-C). stdout carries
only the report; logs, progress and the summary go to stderr.

An error is ONE line on stderr, ``safehub: INPUT: MESSAGE [FIRST DETAIL; N more with -v];
fix: FIX``, with every text from a file, repository or server escaped; ``-v`` adds the
details (rules, findings, policy problems, a sandbox traceback) as indented lines.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

from safehub._format.escape import Block, escape_block, escape_line
from safehub._version import __version__
from safehub.cli._common import EXIT_ERROR, EXIT_INTERRUPTED, STDOUT
from safehub.cli._exitcodes import exit_code
from safehub.cli._interrupt import interrupts_outside_imports
from safehub.errors import SafehubError

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
    # Python warnings (torch's, numpy's: their text can quote a file's or a server's) go
    # through the same escaping as every record; printed as they were, a newline in one
    # started a line of their choosing. (logging.captureWarnings logs the text as the
    # record's own message, which is not escaped.)
    warnings.showwarning = _log_warning


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
    logging.getLogger("safehub").warning("%s (%s:%d): %s", category.__name__, filename,
                                         lineno, str(message))


# Subcommands that run PyTorch (in the sandbox or here); the others never import it.
_NEEDS_TORCH = {"load": "safehub load", "list": "safehub list", "help": "safehub help",
                "convert": "safehub convert"}


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an unusable report or tensor target before any work is done."""
    from safehub.cli._output import check_target

    if (getattr(args, "output", None) not in (None, STDOUT) and hasattr(args, "format")
            and args.command != "convert"):
        check_target(args.output, flag="-o")
    if args.command == "load" and getattr(args, "out", None) is not None:
        check_target(args.out, flag="--out")
    if args.command == "audit" and getattr(args, "fix", False) and args.quarantine is not None:
        from safehub.cli._output import check_folder

        check_folder(args.quarantine, flag="--quarantine")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the library itself never exits)."""
    with interrupts_outside_imports():
        try:
            return _main(argv)
        except KeyboardInterrupt:  # before logging is set up (while parsing); see _run
            sys.stderr.write("safehub: interrupted\n")
            return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
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
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    log = logging.getLogger("safehub")
    try:
        if args.command in _NEEDS_TORCH:
            from safehub._torchdep import require_torch

            require_torch(_NEEDS_TORCH[args.command])
        _check_outputs(args)
        if args.command in _NEEDS_TORCH and hasattr(args, "repo"):
            from safehub._hub.warm import prestart

            prestart(args.repo, args.source)  # the zygote first; the rest overlaps its start
        code = int(args.run(args))
        if getattr(args, "policy_note", None):  # the policy a hub command ran under
            log.info("policy: %s", args.policy_note)
        return code
    except SafehubError as exc:
        _report(exc, args.verbose)
        return exit_code(exc)
    except KeyboardInterrupt:
        # As shells report SIGINT (128 + 2); reports are written atomically, so nothing
        # half-written is left behind.
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one catch-all: an internal error is never a clean exit
        if args.verbose:
            log.error("internal error (please report it): %s: %s\n%s", type(exc).__name__, exc,
                      Block("\n".join(escape_block(traceback.format_exc(), indent="  "))))
        else:
            log.error("internal error (please report it; -v shows where): %s: %s",
                      type(exc).__name__, exc)
        return EXIT_ERROR


def _report(exc: SafehubError, verbose: bool) -> None:
    """An error is one line on stderr (input, message, first detail, fix); with ``-v`` the
    details follow it as indented lines."""
    log = logging.getLogger("safehub")
    if not verbose:
        log.error("%s", Block(exc.summary(surface="cli")))
        return
    log.error("%s", Block("\n".join([exc.summary(surface="cli", details=False),
                                      *exc.detail_lines()])))
