"""Remote locations in an audit (``https://``, ``hf://``, ``s3://``): listed here, scanned
by range reads (see :mod:`safehub._remote`) on this machine's threads or on Dask workers,
with what each file cost, and resumable from the journal."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from safehub._audit.compliance import file_findings
from safehub._audit.context import Context
from safehub._audit.executor import DaskExecutor
from safehub._audit.journal import Journal
from safehub._audit.model import FileTarget, Provenance
from safehub._remote.http import Stats
from safehub._remote.scan import RemoteItem, _unreadable, is_reported, list_remote, scan_batch
from safehub.errors import FetchError, PolicyViolation
from safehub.findings import FileReport, Skipped

__all__ = ["RemoteAudit", "audit_remote"]

_BATCH = 16


@dataclass
class RemoteAudit:
    """Entries, where they came from, what they cost, and what was skipped."""

    entries: dict[str, FileReport] = field(default_factory=dict)
    provenance: dict[str, Provenance] = field(default_factory=dict)
    costs: dict[str, tuple[int, int]] = field(default_factory=dict)  # requests, bytes
    skipped: list[Skipped] = field(default_factory=list)
    scanned: int = 0
    reused: int = 0


def _batches(items: list[RemoteItem], ctx: Context) -> Iterator[tuple[list[RemoteItem], object,
                                                                     object]]:
    options = ctx.policy.scan_options()
    for i in range(0, len(items), _BATCH):
        yield items[i:i + _BATCH], ctx.policy, options


def audit_remote(specs: list[str], ctx: Context, *, executor: DaskExecutor | None = None,
                 journal: Journal | None = None, threads: int = 8,
                 progress: Callable[[str], None] | None = None) -> RemoteAudit:
    """Audit every file the remote locations name."""
    out = RemoteAudit()
    listing = Stats()
    items: list[RemoteItem] = []
    for spec in specs:
        try:
            items.extend(list_remote(spec, ctx.policy, listing))
        except (FetchError, PolicyViolation) as exc:
            out.entries[spec] = _unreadable(spec, exc.message)
            out.provenance[spec] = Provenance("remote", url=spec)
    todo: list[RemoteItem] = []
    for item in items:
        previous = journal.remote.get(item.display) if journal else None
        if previous is not None and item.identity and previous[0] == item.identity:
            _add(out, item, previous[1], previous[2], previous[3], ctx, reused=True)
            if progress:
                progress(item.display)
        else:
            todo.append(item)

    def done(item: RemoteItem, report: FileReport, stats: Stats) -> None:
        if journal is not None:
            journal.add_remote(item.display, item.identity, report, stats.requests,
                               stats.bytes)
        _add(out, item, report, stats.requests, stats.bytes, ctx, reused=False)
        if progress:
            progress(item.display)

    if executor is not None:
        for batch in executor.map_unordered(scan_batch, _batches(todo, ctx)):  # type: ignore[arg-type]
            for item, report, stats in batch:
                done(item, report, stats)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for batch in pool.map(scan_batch, _batches(todo, ctx)):
                for item, report, stats in batch:
                    done(item, report, stats)
    return out


def _add(out: RemoteAudit, item: RemoteItem, report: FileReport, requests: int, nbytes: int,
         ctx: Context, *, reused: bool) -> None:
    if reused:
        out.reused += 1
    else:
        out.scanned += 1
    if not is_reported(item, report):
        out.skipped.append(Skipped(item.display, "not a model format"))
        return
    provenance = Provenance("remote", url=item.url or item.display)
    target = FileTarget(item.display, item.display, provenance, name=item.display
                        .rsplit("/", 1)[-1], url=item.url or None, model_only=item.listed)
    extra = file_findings(target, report, ctx)
    out.entries[item.display] = dataclasses.replace(
        report, findings=(*report.findings, *extra))
    out.provenance[item.display] = provenance
    out.costs[item.display] = (requests, nbytes)
