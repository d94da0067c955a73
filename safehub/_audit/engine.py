"""An audit from start to end: discover, check files (in parallel), check folders, report."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from safehub._audit.compliance import file_findings, repo_findings
from safehub._audit.context import Context
from safehub._audit.discover import discover
from safehub._audit.executor import DaskExecutor
from safehub._audit.integrity import integrity_findings, needed_digests
from safehub._audit.journal import Journal
from safehub._audit.locations import default_roots, torch_hub_dir
from safehub._audit.model import FileTarget, Provenance
from safehub._audit.pins import Pins, find_lockfile
from safehub._audit.remote import RemoteAudit, audit_remote
from safehub._audit.report import AuditReport, AuditStats
from safehub._audit.runner import default_workers, run_jobs
from safehub._audit.state import State
from safehub._audit.work import Job, Outcome, scan_fingerprint
from safehub._fetch.lockfile import Lockfile
from safehub._policy.policy import Policy
from safehub._remote.target import is_remote
from safehub._scanner.engine import MODEL_SUFFIXES
from safehub.errors import SafehubError
from safehub.findings import FileReport, Finding, ScanReport, Skipped, Verdict

__all__ = ["run_audit"]

log = logging.getLogger("safehub.audit")


def _lockfile(lockfile: Lockfile | str | os.PathLike[str] | None) -> Lockfile | None:
    if isinstance(lockfile, Lockfile):
        return lockfile
    if lockfile is not None:
        return Lockfile.load(lockfile, missing_ok=False)
    found = find_lockfile()
    return Lockfile.load(found, missing_ok=False) if found is not None else None


def run_audit(paths: Sequence[str | os.PathLike[str]] | None, *, policy: Policy,
              lockfile: Lockfile | str | os.PathLike[str] | None = None,
              state_path: Path | None = None, rescan: bool = False,
              workers: int | None = None,
              progress: Callable[[str], None] | None = None,
              executor: DaskExecutor | None = None,
              journal: Path | None = None) -> AuditReport:
    """See :func:`safehub.audit.audit`."""
    started = time.perf_counter()
    lock = _lockfile(lockfile)
    ctx = Context(policy, Pins(lock, policy))
    defaults = not paths
    given = default_roots() if defaults else [os.fspath(p) for p in paths or ()]
    remote_specs = [r for r in given if is_remote(r)]
    roots = [r for r in given if not is_remote(r)]
    found = discover(roots, ctx, defaults=defaults, torch_hub=torch_hub_dir())
    state = State.load(state_path)
    workers = executor.workers if executor is not None else (workers or default_workers())
    results = Journal(journal) if journal is not None else None
    if results is not None:
        state.entries.update(results.files)  # a rerun resumes where the journal ends

    jobs: dict[str, Job] = {}
    for target in found.files:
        if target.error:
            continue
        options = policy.scan_options(target.repo)
        need = needed_digests(target)
        previous = jobs.get(target.real)
        if previous is not None:
            need = tuple(sorted({*need, *previous.need}))
        jobs[target.real] = Job(target.real, options, scan_fingerprint(options), need,
                                state.entries.get(target.real), rescan)
    try:
        outcomes = run_jobs(list(jobs.values()), workers=workers, progress=progress,
                            executor=executor,
                            done=results.add_file if results is not None else None)
        remote = audit_remote(remote_specs, ctx, executor=executor, journal=results,
                              progress=progress) if remote_specs else RemoteAudit()
    finally:
        if results is not None:
            results.close()

    entries: dict[str, FileReport] = {}
    provenance: dict[str, Provenance] = {}
    skipped = list(found.skipped)
    for target in found.files:
        report = _file_report(target, outcomes.get(target.real), ctx)
        if report is None:
            skipped.append(Skipped(target.path, "not a model format"))
            continue
        entries[target.path] = report
        provenance[target.path] = target.provenance

    entries.update(remote.entries)
    provenance.update(remote.provenance)
    skipped.extend(remote.skipped)

    kinds: dict[str, str] = {}
    for repo in found.repos:
        findings = [*repo.findings, *repo_findings(repo, ctx, state, rescan=rescan)]
        kept: list[Finding] = []
        for finding in findings:
            owner = entries.get(finding.path)
            if finding.path != repo.path and owner is not None:
                entries[finding.path] = dataclasses.replace(
                    owner, findings=(*owner.findings, finding))
            else:
                kept.append(finding)
        if repo.kind in ("folder", "file") and not kept:
            continue  # a plain root is only reported when something is wrong with it
        same = entries.get(repo.path)
        if same is not None:  # a single-file model: its findings go to the file
            entries[repo.path] = dataclasses.replace(same, findings=(*same.findings, *kept))
            continue
        entries[repo.path] = FileReport(path=repo.path, format=repo.kind, size=0,
                                        findings=tuple(kept))
        kinds[repo.path] = repo.kind
        provenance[repo.path] = repo.provenance

    seen = {real for real, outcome in outcomes.items() if outcome.entry is not None}
    for real, outcome in outcomes.items():
        if outcome.entry is not None:
            state.entries[real] = outcome.entry
    repo_reals = {os.path.realpath(r.path) for r in found.repos}
    seen |= {k for k in state.signatures if k.partition("\x1f")[0] in repo_reals}
    state.prune([r for r in roots if os.path.isdir(r)], seen)
    try:
        state.save()
    except (OSError, SafehubError) as exc:
        log.warning("could not save the audit state %s: %s", state.path, exc)

    scan_report = ScanReport(files=tuple(entries[k] for k in sorted(entries)),
                             skipped=tuple(sorted(skipped, key=lambda s: s.path)),
                             roots=tuple(given), policy=policy.source)
    stats = AuditStats(
        scanned=sum(1 for o in outcomes.values() if o.scanned) + remote.scanned,
        reused=sum(1 for o in outcomes.values() if not o.scanned and o.entry is not None)
        + remote.reused,
        hashed_bytes=sum(o.hashed_bytes for o in outcomes.values()), workers=workers,
        seconds=time.perf_counter() - started)
    return AuditReport(report=scan_report, provenance=provenance, kinds=kinds,
                       caches=tuple(found.caches), policy=policy.describe(),
                       lockfile=ctx.pins.lockfile_path,
                       state=str(state.path) if state.path else None, stats=stats,
                       remote=remote.costs)


def _file_report(target: FileTarget, outcome: Outcome | None, ctx: Context) -> FileReport | None:
    """The entry for one file, or None when it is not a model file and nothing is wrong."""
    if target.error or outcome is None:
        error = target.error or "not audited"
        finding = ctx.finding("SH193", f"not audited: {error}", target.path)
        return FileReport(path=target.path, format="unreadable", size=0, error=error,
                          findings=(finding, *target.findings))
    scanned = outcome.report
    findings = [f.with_path(target.path) for f in scanned.findings]
    extra = [*target.findings, *integrity_findings(target, outcome, ctx)]
    report = dataclasses.replace(scanned, path=target.path, findings=tuple(findings))
    if report.verdict is Verdict.UNKNOWN and not report.error:
        named_model = (target.name or target.path).lower().endswith(MODEL_SUFFIXES)
        if not extra:
            return report if named_model or not target.model_only else None
        if not named_model and target.model_only:
            # Not a model file, but something is wrong with it (changed since download):
            # report that, not the format.
            return FileReport(path=target.path, format="data", size=report.size,
                              findings=tuple(extra))
    extra.extend(file_findings(target, report, ctx))
    return dataclasses.replace(report, findings=(*report.findings, *extra))
