"""``safehub scan PATH...``: the static scanner, for people and CI."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from safehub._format.text import summary_line
from safehub.cli._common import (
    ProgressLine,
    add_output_options,
    exit_code_for,
    log_problem_files,
    positive_seconds,
    said_it_all,
    write_report,
)
from safehub.findings import PolicySource
from safehub.scan import ScanOptions, ScanReport, check_allowable, scan

if TYPE_CHECKING:
    from safehub.policy import Policy

__all__ = ["add_deadline_option", "register", "with_deadline"]

log = logging.getLogger("safehub")
# What the report names when no policy is selected (the scanner's defaults are default's).
_DEFAULT_SOURCE = PolicySource("default", ("preset:default",), "the built-in default")

HELP = "scan model files and folders for code that loading them would run"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scan", help=HELP, description=HELP + (
        ". Exit 0 when every file is clean, 1 when any is unsafe, 2 when a file could not "
        "be scanned or nothing was."))
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="files or folders (recursive), or https://, hf://owner/name[@rev]"
                        "[/path] and s3://bucket/prefix URLs (read by byte ranges)")
    p.add_argument("--allow-global", action="append", default=[], metavar="NAME",
                   help="also allow this global (exact name or module.*); repeatable")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="accept TorchScript archives (their code must then run sandboxed)")
    p.add_argument("--decompile", action="store_true", help=(
        "show unsafe pickle records as the Python they would run (fickling's decompiler)"))
    p.add_argument("--policy", metavar="NAME|PATH", help=(
        "take allowed globals, TorchScript acceptance, size limits and the blocking severity "
        "from this policy (default: $SAFEHUB_POLICY or [tool.safehub], if set)"))
    add_deadline_option(p)
    add_output_options(p)
    p.set_defaults(run=run)


def add_deadline_option(p: argparse.ArgumentParser) -> None:
    """``--deadline SECONDS``: the policy's ``downloads.deadline_s`` for this run, tightened
    only (a value above the policy's is ignored with a warning)."""
    p.add_argument("--deadline", type=positive_seconds, metavar="SECONDS", help=(
        "overall time limit per remote request (the policy's downloads.deadline_s for this "
        "run; it can only be lowered)"))


def with_deadline(policy: Policy, seconds: float | None) -> Policy:
    """``policy`` with ``downloads.deadline_s`` lowered to ``seconds`` for one run
    (``--deadline``); a value that would raise it changes nothing."""
    downloads = policy.model.downloads
    if seconds is None or seconds >= downloads.deadline_s:
        if seconds is not None:
            log.warning("--deadline %g is not below the policy's downloads.deadline_s = %g "
                        "(%s); the policy's applies", seconds, downloads.deadline_s,
                        policy.where("downloads", "deadline_s") or policy.name)
        return policy
    from safehub._policy.loader import LoadedPolicy
    from safehub.policy import Policy

    loaded = policy._loaded
    provenance = {**loaded.provenance, ("downloads", "deadline_s"): "--deadline"}
    model = policy.model.model_copy(update={
        "downloads": downloads.model_copy(update={"deadline_s": seconds})})
    derived = LoadedPolicy(model=model, chain=[*loaded.chain, "--deadline"],
                           provenance=provenance, sources=loaded.sources)
    return Policy(derived, policy.selected_by)


def _options(args: argparse.Namespace) -> ScanOptions:
    allowed = tuple(args.allow_global)
    check_allowable(allowed, source="--allow-global")
    options = ScanOptions(allowed_globals=allowed, allow_torchscript=args.allow_torchscript,
                          allowed_by="command line", decompile=args.decompile)
    # Only a selected policy is loaded: the built-in default adds nothing to the scanner's own
    # defaults, and skipping it keeps `safehub scan` fast.
    from safehub._policy.select import BUILT_IN_DEFAULT, resolve_spec

    _, why = resolve_spec(args.policy)
    if why == BUILT_IN_DEFAULT:
        return options
    from safehub.policy import load_policy

    policy = load_policy(args.policy)  # not the resolved spec: implicit ones may only tighten
    args.policy_source = policy.source
    log.debug("policy %s (%s)", policy.name, why)
    base = policy.scan_options()
    return replace(base, allowed_globals=base.allowed_globals + allowed,
                   allow_torchscript=base.allow_torchscript or args.allow_torchscript,
                   decompile=args.decompile,
                   allowed_by=base.allowed_by if not allowed else "policy and command line")


def run(args: argparse.Namespace) -> int:
    options = _options(args)
    progress = ProgressLine("scanning")
    remote: list[str] = []
    if any("://" in p for p in args.paths):  # every remote scheme has one; skip the import
        from safehub._remote.target import is_remote

        remote = [p for p in args.paths if is_remote(p)]
    local = [p for p in args.paths if p not in remote]
    report = scan(local, options=options, progress=progress) if local else ScanReport()
    if remote:  # https://, hf://, s3://: range reads, every URL decided by the policy
        from safehub.cli._remote import scan_urls
        from safehub.policy import load_policy

        policy = with_deadline(load_policy(args.policy), args.deadline)
        report = scan_urls(remote, policy, options, report, progress)
    progress.done()
    report = replace(report, policy=getattr(args, "policy_source", None) or _DEFAULT_SOURCE)
    write_report(report, args, command="scan")
    log_problem_files(report, args, not_done="not scanned")
    if not said_it_all(report):
        log.info("%s", summary_line(report))
    return exit_code_for(report)
