"""``safehub policy show|check|explain|schema``: inspect, validate and question policies."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
from typing import Any

from safehub._format.escape import escape_line
from safehub.cli._common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from safehub.cli._output import write_stdout
from safehub.errors import InvalidIdentifier, PolicyError
from safehub.policy import (
    Decision,
    DownloadRequest,
    FileRequest,
    Policy,
    RepoRequest,
    load_policy,
)

__all__ = ["add_policy_option", "register"]

log = logging.getLogger("safehub")
SCHEMA_VERSION = "1"


def add_policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", metavar="NAME|PATH", help=(
        "policy preset (strict, default, permissive) or file; default: $SAFEHUB_POLICY, "
        "[tool.safehub] in pyproject.toml (these two may only tighten 'default'), else "
        "'default'"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="show, check and explain policies",
                       description="Show, check and explain safehub policies.")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    show = psub.add_parser("show", help="print the effective policy (after extends)")
    show.add_argument("spec", nargs="?", metavar="NAME|PATH")
    show.add_argument("-f", "--format", choices=["toml", "json"], default="toml")
    show.set_defaults(run=_show)

    check = psub.add_parser("check", help="validate policy files (exit 2 when invalid)")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.set_defaults(run=_check)

    explain = psub.add_parser("explain", help="print the decision trail for a request")
    explain.add_argument("request", nargs="?", metavar="OWNER/REPO[:REF]|DIR",
                         help="a GitHub repo, or a local folder")
    explain.add_argument("--entrypoint", metavar="NAME")
    explain.add_argument("--url", action="append", default=[], metavar="URL",
                         help="a download to decide (repeatable)")
    explain.add_argument("--file", action="append", default=[], metavar="PATH",
                         help="a model file to scan and decide (repeatable)")
    explain.add_argument("--trust-repo", action="store_true",
                         help="as hub.load(trust_repo=True)")
    explain.add_argument("-f", "--format", choices=["text", "json"], default="text")
    add_policy_option(explain)
    explain.set_defaults(run=_explain)

    schema = psub.add_parser("schema", help="print the JSON Schema of policy files")
    schema.set_defaults(run=_schema)


def _show(args: argparse.Namespace) -> int:
    policy = load_policy(args.spec)
    if args.format == "json":
        from safehub._format.escape import inert_json, json_clean

        data = policy.model.model_dump(mode="json", by_alias=True)
        body = json_clean({"schema_version": SCHEMA_VERSION, "chain": policy.chain,
                           "policy": data})
        write_stdout(inert_json(json.dumps(body, indent=2)) + "\n")
    else:
        write_stdout(policy.to_toml())
    return EXIT_OK


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a policy file (an input error, not an invalid policy),
    checked without opening it: opening a FIFO would block."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "policy file not found"
    except OSError as exc:
        return f"cannot read the policy file: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a policy file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot read the policy file: permission denied"
    return None


def _check(args: argparse.Namespace) -> int:
    # The report (OK / INVALID with every problem) goes to stdout; a path that cannot be read
    # at all is an input error: one line on stderr, exit 2. Text from the files is escaped.
    status = EXIT_OK
    for path in args.paths:
        shown = escape_line(path)
        why = _unreadable(path)
        if why is not None:
            log.error("%s: %s; fix: pass the path of a policy TOML file", path, why)
            status = EXIT_ERROR
            continue
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            status = EXIT_ERROR
            write_stdout(f"{shown}: INVALID: {escape_line(exc.message)}\n")
            for line in [str(i) for i in exc.issues] or [exc.message]:
                write_stdout(f"  {escape_line(line)}\n")
            continue
        problems = _anchor_problems(policy)
        if problems:
            status = EXIT_ERROR
            write_stdout(f"{shown}: INVALID: {len(problems)} trust anchors are unusable\n")
            write_stdout("".join(f"  {escape_line(problem)}\n" for problem in problems))
            continue
        chain = escape_line(" <- ".join(reversed(policy.chain)))
        write_stdout(f"{shown}: OK (extends: {chain})\n")
    return status


def _anchor_problems(policy: Policy) -> list[str]:
    """Every key or certificate file a signature rule names that cannot be used."""
    from safehub.errors import SafehubError
    from safehub.signing import TrustedCertificates, TrustedKey

    problems = []
    for where, kind, path in policy.anchors():
        try:
            if kind == "public_keys":
                TrustedKey.from_path(path)
            else:
                TrustedCertificates.from_paths([path])
        except SafehubError as exc:
            where.message = f"{path}: {exc.message}"
            problems.append(str(where))
    return problems


def _schema(args: argparse.Namespace) -> int:
    write_stdout(json.dumps(Policy.json_schema(), indent=2) + "\n")
    return EXIT_OK


def _invalid_input(args: argparse.Namespace) -> str | None:
    """Why a URL or repo named on the command line has no canonical form, or a --file names
    nothing (an input error, exit 2, as for `safehub scan`; not a denial) (one line)."""
    from safehub._fetch.github import RepoSpec
    from safehub._format.escape import escape_line
    from safehub._policy.urls import canonical_url

    for path in args.file:
        if not os.path.lexists(path) and "://" not in path:
            return f"{escape_line(path)}: no such file or folder (--file)"
    try:
        for url in args.url:
            canonical_url(url)
        if args.request and not os.path.isdir(args.request):
            RepoSpec.parse(args.request)
    except InvalidIdentifier as exc:
        return exc.summary(surface="cli")
    return None


def _explain(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    invalid = _invalid_input(args)
    if invalid is not None:
        log.error("%s", invalid)
        return EXIT_ERROR
    decisions: list[tuple[str, Decision]] = []
    if args.request:
        decisions.append(("repo", policy.decide(_repo_request(args))))
    for url in args.url:
        repo = args.request if args.request and not os.path.isdir(args.request) else None
        decisions.append(("download", policy.decide(DownloadRequest(url, repo=repo))))
    for path in args.file:
        from safehub.scan import scan

        repo = args.request.split(":", 1)[0] if args.request else None
        report = scan([path], options=policy.scan_options(repo))
        for file in report.files:
            decisions.append(("file", policy.decide(FileRequest(file, repo=repo))))
    if not decisions:
        log.error("nothing to explain: give OWNER/REPO[:REF], a folder, --url or --file")
        return EXIT_ERROR
    if args.format == "json":
        from safehub._format.escape import json_clean

        write_stdout(json.dumps(json_clean(_json(policy, decisions)), indent=2) + "\n")
    else:
        write_stdout(_text(policy, decisions))
    return EXIT_OK if all(d.allowed for _, d in decisions) else EXIT_FINDINGS


def _repo_request(args: argparse.Namespace) -> RepoRequest:
    spec: str = args.request
    trust = True if args.trust_repo else None
    if os.path.isdir(spec):
        return RepoRequest(spec, entrypoint=args.entrypoint, source="local", trust_repo=trust)
    repo, _, ref = spec.partition(":")
    return RepoRequest(repo, ref=ref or None, entrypoint=args.entrypoint, trust_repo=trust)


def _text(policy: Policy, decisions: list[tuple[str, Decision]]) -> str:
    lines = [f"policy: {policy.name} ({' <- '.join(reversed(policy.chain))}; "
             f"{policy.selected_by})"]
    for kind, d in decisions:
        lines.append("")
        lines.append(f"{kind}: {d.subject}")
        if d.identity:
            lines.append(f"identity: {d.identity}")
        lines.append(f"decision: {'ALLOWED' if d.allowed else 'DENIED'}")
        lines.extend(f"  {step}" for step in d.trail)
        for req in d.requirements:
            lines.append(f"  requires {req.kind}: {req.value} ({req.rule})")
        if not d.allowed and d.fix:
            lines.append(f"  fix: {d.fix}")
    # Subjects, trails and fixes quote file names, repos and URLs: each line stays one line.
    return "\n".join(escape_line(line) for line in lines) + "\n"


def _json(policy: Policy, decisions: list[tuple[str, Decision]]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "policy": {"name": policy.name, "chain": policy.chain, "selected_by": policy.selected_by},
        "decisions": [
            {
                "kind": kind,
                "subject": d.subject,
                "identity": d.identity,
                "allowed": d.allowed,
                "trail": [{"rule": s.rule, "source": s.source, "outcome": s.outcome,
                           "message": s.message} for s in d.trail],
                "requirements": [{"kind": r.kind, "value": r.value, "rule": r.rule}
                                 for r in d.requirements],
                "fix": d.fix,
            }
            for kind, d in decisions
        ],
    }
