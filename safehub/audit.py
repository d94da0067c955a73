"""Audit what is already on disk: model caches and folders, against scan, policy and records.

>>> from safehub.audit import audit
>>> result = audit()                       # torch's hub dir and the Hugging Face cache
>>> result = audit(["/srv/models"], policy="strict", lockfile="safehub.lock")
>>> result.unsafe, result.summary()

For every model file: the scan verdict (with the policy's scanner options); whether its
bytes still match what was recorded when it was downloaded (a Hugging Face blob's name,
safehub's cache records, torch's ``-<hash>.`` file-name prefix: SH400) and what a
``safehub.lock`` or the policy pins (SH300); advice to convert clean pickle files
(SH402). For every repository folder: whether the policy would let its code be used
(owner trusted, commit pinned: SH201, SH202), whether its URL is allowed (SH203), and
its signature where the policy requires one (SH204, SH30x). Provenance (repo, revision,
refs, URL) is reported where the cache records it.

Layouts are recognised by content: torch's hub directory (``<owner>_<repo>_<ref>/``,
``checkpoints/``, ``trusted_list``, safehub's ``safehub/`` cache), the Hugging Face
cache (``models--org--name/{blobs,snapshots,refs}``), else plain files.

Files are checked in parallel across processes. The audit is incremental: a file whose
device, inode, size, mtime and ctime are unchanged since the last audit is neither
hashed nor scanned again (``rescan=True`` does everything again). The state is kept in
the user's own state folder (see :func:`default_state_path`), never in the cache.

``fix`` converts clean pickle checkpoints to safetensors in the sandbox and moves the
originals to a quarantine folder, recording every step (see :mod:`safehub.convert`).
The library never prints: ``progress`` is a callback that receives each path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safehub._audit.engine import run_audit
from safehub._audit.executor import DaskExecutor, parse_executor
from safehub._audit.locations import default_roots, hf_hub_cache, torch_hub_dir
from safehub._audit.model import Provenance
from safehub._audit.quarantine import check_quarantine, default_quarantine, fix_report
from safehub._audit.report import AuditReport, AuditStats, FixRecord, render_audit
from safehub._audit.runner import default_workers
from safehub._audit.state import default_state_path
from safehub._fetch.lockfile import Lockfile
from safehub.policy import Policy, load_policy

__all__ = [
    "AuditReport",
    "AuditStats",
    "FixRecord",
    "Provenance",
    "audit",
    "check_quarantine",
    "default_quarantine",
    "default_roots",
    "default_state_path",
    "default_workers",
    "fix",
    "hf_hub_cache",
    "render_audit",
    "torch_hub_dir",
]

PathArg = str | os.PathLike[str]


def audit(paths: Sequence[PathArg] | None = None, *,
          policy: Policy | PathArg | None = None,
          lockfile: Lockfile | PathArg | None = None,
          state_file: PathArg | None = None, incremental: bool = True,
          rescan: bool = False, workers: int | None = None,
          progress: Callable[[str], None] | None = None,
          executor: str | None = None, journal: PathArg | None = None) -> AuditReport:
    """Audit ``paths`` (default: torch's hub directory and the Hugging Face cache).

    ``policy``: a :class:`~safehub.policy.Policy`, preset name or path (None: the default
    selection). ``lockfile``: a :class:`~safehub.fetch.Lockfile` or path (None: the
    nearest ``safehub.lock`` in the working folder or above, if any). ``state_file``:
    where the incremental state lives (None: :func:`default_state_path`);
    ``incremental=False`` neither reads nor writes one. ``rescan``: hash and scan
    everything again. ``workers``: processes (default: one per usable CPU; with
    ``executor="dask-local"``, the local Dask cluster's worker processes).

    ``paths`` may also be remote: ``https://…``, ``hf://owner/name[@rev][/path]``,
    ``s3://bucket/prefix`` (scanned by range reads, every URL decided by the policy;
    :attr:`AuditReport.remote` holds each file's requests and bytes).
    ``executor``: ``None`` (this machine), ``"dask-local"`` or ``"dask://HOST:PORT"``
    (the ``dask`` extra): files are checked on Dask workers, and the report is the same.
    ``journal``: a JSON-lines file each file's result is appended to as it is done; a
    rerun with the same journal does not check again what it holds (unchanged).

    Raises :class:`~safehub.errors.PolicyError` for an invalid policy, lockfile or
    trust anchor. Findings never raise: they are in the report.
    """
    chosen = load_policy(policy)
    state: Path | None = None
    if incremental:
        state = Path(state_file) if state_file is not None else default_state_path()
    address = parse_executor(executor)
    results = Path(journal) if journal is not None else None
    if address is None:
        return run_audit(paths, policy=chosen, lockfile=lockfile, state_path=state,
                         rescan=rescan, workers=workers, progress=progress, journal=results)
    with DaskExecutor(address, workers=workers or 2) as pool:
        return run_audit(paths, policy=chosen, lockfile=lockfile, state_path=state,
                         rescan=rescan, workers=workers, progress=progress, executor=pool,
                         journal=results)


def fix(report: AuditReport, *, quarantine: PathArg | None = None,
        policy: Policy | PathArg | None = None, sandbox: Any | None = None,
        dry_run: bool = False,
        progress: Callable[[str], None] | None = None) -> AuditReport:
    """Convert every clean torch checkpoint of ``report`` to safetensors (in the sandbox) and
    move the original into ``quarantine`` (default :func:`default_quarantine`), recording
    original path, new path, both SHA-256 and the time in the run's ``manifest.json``.
    Nothing is deleted. Files in the Hugging Face cache and safehub's cache, links, files
    already in a quarantine, files with any blocking finding, and files that are not torch
    checkpoints are left alone, each with the reason. The converted file's name never
    carries torch's ``-<hex>.`` digest-prefix pattern, and a ``.safehub-fix.json`` record
    beside it holds its SHA-256, which later audits check. ``dry_run``: decide the same,
    record each step as ``planned``, change nothing. Returns ``report`` with
    :attr:`AuditReport.fixes` filled in. Raises :class:`~safehub.errors.SafehubError`
    when ``quarantine`` is not a folder that can be written.
    """
    chosen = load_policy(policy)
    return fix_report(report, policy=chosen,
                      quarantine=Path(quarantine) if quarantine is not None else None,
                      sandbox=sandbox, dry_run=dry_run, progress=progress)
