"""``safehub audit [PATH...]``: what is already on disk, against scan, policy and records."""

from __future__ import annotations

import argparse
import logging
import sys

from safehub._remote.target import is_remote
from safehub.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    ProgressLine,
    add_output_options,
    emit,
    exit_code_for,
    log_problem_files,
    said_it_all,
    use_color,
)
from safehub.cli.scan import add_deadline_option, with_deadline

__all__ = ["register", "run"]

log = logging.getLogger("safehub")

HELP = "audit model caches and folders: scan verdicts, tampering, policy, provenance"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help=HELP, description=HELP + (
        ". Without PATH: torch's hub directory and the Hugging Face cache. Exit 0 when "
        "everything is clean, 1 when anything is unsafe, tampered or against the policy, 2 "
        "when something could not be checked or nothing was found."))
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="caches or folders to audit (default: the torch and Hugging Face "
                        "caches), or https://, hf://owner/name[@rev][/path] and "
                        "s3://bucket/prefix URLs (read by byte ranges)")
    p.add_argument("--policy", metavar="NAME|PATH",
                   help="policy to check against (default: $SAFEHUB_POLICY, [tool.safehub], "
                        "else the built-in default)")
    p.add_argument("--lockfile", metavar="PATH",
                   help="pins to check against (default: the nearest safehub.lock, if any)")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--state", metavar="PATH",
                       help="incremental state file (default: "
                            "$XDG_STATE_HOME/safehub/audit-state.json)")
    state.add_argument("--no-state", action="store_true",
                       help="neither read nor write the incremental state")
    p.add_argument("--rescan", action="store_true",
                   help="hash and scan every file again, even if unchanged since the last "
                        "audit")
    p.add_argument("-j", "--jobs", type=int, metavar="N",
                   help="worker processes (default: one per CPU)")
    p.add_argument("--executor", metavar="local|dask-local|dask://HOST:PORT",
                   help="where files are checked: this machine (default), a local Dask "
                        "cluster of --jobs worker processes, or a running Dask scheduler")
    p.add_argument("--journal", metavar="PATH",
                   help="append each file's result to PATH as a JSON line as it is done; "
                        "a rerun with the same journal resumes where it stopped")
    p.add_argument("--fix", action="store_true",
                   help="convert clean pickle checkpoints to safetensors (in the sandbox) and "
                        "move the originals to the quarantine folder")
    p.add_argument("--quarantine", metavar="DIR",
                   help="where --fix moves originals (default: "
                        "$XDG_STATE_HOME/safehub/quarantine)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --fix: print what would be converted and moved, change nothing")
    add_deadline_option(p)
    add_output_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from safehub.audit import audit, render_audit

    if args.jobs is not None and args.jobs < 1:
        log.error("--jobs must be at least 1")
        return EXIT_ERROR
    if args.quarantine and not args.fix:
        log.error("--quarantine goes with --fix")
        return EXIT_ERROR
    if args.dry_run and not args.fix:
        log.error("--dry-run goes with --fix")
        return EXIT_ERROR
    from safehub._audit.executor import parse_executor
    from safehub.errors import SafehubError

    try:
        parse_executor(args.executor)
    except SafehubError as exc:
        log.error("--executor %s: %s", args.executor, exc.message)
        return EXIT_ERROR
    if args.fix and any(is_remote(p) for p in args.paths):
        log.error("--fix works on files on disk, not on remote URLs")
        return EXIT_ERROR
    if args.fix:
        from pathlib import Path

        from safehub.audit import check_quarantine

        try:  # before any work: a bad --quarantine must not cost a whole audit
            check_quarantine(Path(args.quarantine) if args.quarantine else None)
        except SafehubError as exc:
            log.error("--quarantine %s: %s", exc.subject or args.quarantine, exc.message)
            return EXIT_ERROR
    progress = ProgressLine("auditing")
    policy = args.policy
    if args.deadline is not None:  # --deadline: the policy's downloads.deadline_s, lowered
        from safehub.policy import load_policy

        policy = with_deadline(load_policy(args.policy), args.deadline)
    result = audit(args.paths or None, policy=policy, lockfile=args.lockfile,
                   state_file=args.state, incremental=not args.no_state, rescan=args.rescan,
                   workers=args.jobs, progress=progress, executor=args.executor,
                   journal=args.journal)
    progress.done()
    failed_fixes = False
    if args.fix:
        from safehub.audit import fix

        result = fix(result, quarantine=args.quarantine, policy=args.policy,
                     dry_run=args.dry_run)
        failed_fixes = any(f.action == "failed" for f in result.fixes)
        for record in result.fixes:
            if record.action == "converted":
                log.info("fixed %s -> %s; original moved to %s", record.original,
                         record.converted, record.quarantined)
            elif record.action == "failed":
                log.error("could not fix %s: %s", record.original, record.reason)
    for path, (requests, nbytes) in sorted(result.remote.items()):
        log.info("fetched %d bytes in %d requests: %s", nbytes, requests, path)
    color = use_color(sys.stdout) and not args.output
    emit(render_audit(result, args.format, color=color, verbose=args.verbose), args)
    log_problem_files(result.report, args, not_done="not checked")
    if not result.report.files:
        log.warning("nothing to audit in %s", ", ".join(result.report.roots) or "-")
    elif not said_it_all(result.report):  # one error, one line
        log.info("%s", result.summary())
    code = exit_code_for(result.report)
    return EXIT_ERROR if code == EXIT_OK and failed_fixes else code
