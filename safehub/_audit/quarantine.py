"""``audit --fix``: convert clean pickle checkpoints and move the originals aside, never
deleting anything, and record every step.

A file is fixed when the audit found it clean (no blocking finding: not unsafe, not
tampered, not against the policy) and it is a torch checkpoint outside the caches that
check their own files (safehub's cache and the Hugging Face cache are left alone, with
the reason; so are links, blobs of a content-addressed store and what is already in a
quarantine). For each such file: it is converted to ``<stem>.safetensors`` beside it
(in the sandbox, see :mod:`safehub.convert`), named without torch's ``-<hex>.``
digest-prefix pattern (see :mod:`safehub._audit.fixrecord`); the new file is read
back; a fix record beside it holds its SHA-256 (the next audit checks it); the original
is moved into the quarantine folder under its absolute path; the manifest
(``manifest.json`` in the quarantine run folder) records the original path, the new
path, the SHA-256 of both and the time. ``dry_run`` decides the same and records each
step as ``planned``, converting and moving nothing. The manifest is rewritten (atomically) before
the move and after it, so a crash in between leaves the original either in place or in
quarantine, and the manifest naming where. Moving across file systems copies, checks
the copy's SHA-256, and only then removes the original.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safehub._audit.fixrecord import TOOL, converted_name, record_path
from safehub._audit.hf_layout import is_hf_repo
from safehub._audit.report import AuditReport, FixRecord
from safehub._convert.writers import write_json
from safehub._policy.policy import Policy
from safehub.errors import SafehubError
from safehub.findings import Verdict

__all__ = ["check_quarantine", "default_quarantine", "fix_report"]

_MANAGED = {"huggingface": "the Hugging Face cache links snapshots to content-addressed "
                           "blobs; convert a copy with `safehub convert`",
            "safehub-cache": "safehub's cache checks its files against their records; "
                             "convert a copy with `safehub convert`"}


def default_quarantine() -> Path:
    """``$XDG_STATE_HOME/safehub/quarantine`` (default ``~/.local/state``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "safehub" / "quarantine"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Manifest:
    def __init__(self, folder: Path, policy: str):
        self.folder = folder
        self.path = folder / "manifest.json"
        self.body: dict[str, Any] = {
            "schema_version": "1", "tool": TOOL, "created": _now(),
            "policy": policy,
            "restore": "move each `quarantined` file back to its `original` path",
            "entries": []}

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.body["entries"].append(entry)
        self.save()
        return entry

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json(self.path, self.body)


def _move(original: Path, target: Path, sha256: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.path.lexists(target):
        raise SafehubError("the quarantine already holds a file at this path",
                           subject=str(target), fix="choose another --quarantine folder")
    try:
        os.rename(original, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another file system: copy, check, then remove
            raise
    shutil.copy2(original, target)
    if _sha256(target) != sha256:
        target.unlink()
        raise SafehubError("the copy in quarantine differs from the original; the original "
                           "was left in place", subject=str(original))
    os.unlink(original)


def check_quarantine(quarantine: Path | None) -> Path:
    """The quarantine folder to use, checked before any work: a folder, or a path whose
    nearest existing ancestor is a writable folder. Raises :class:`SafehubError`."""
    root = quarantine or default_quarantine()
    if os.path.lexists(root) and not root.is_dir():
        raise SafehubError("the quarantine must be a folder, and this is a file",
                           subject=str(root), fix="name a folder with --quarantine")
    probe = root
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise SafehubError(f"the quarantine cannot be created: {probe} is not a writable "
                           "folder", subject=str(root),
                           fix="name a folder you can write to with --quarantine")
    return root


def _left_alone(original: Path, quarantine: Path) -> str:
    """Why ``original`` must not be converted and moved, or ``""``."""
    if original.is_symlink():
        return "a link: fixing it would move what other paths point to"
    real = original.resolve()
    parent = real.parent
    if parent.name == "blobs" and is_hf_repo(str(parent.parent)):
        return _MANAGED["huggingface"]
    try:
        if real.is_relative_to(quarantine.resolve()):
            return "already kept in quarantine"
    except OSError:
        pass
    for folder in real.parents:
        manifest = folder / "manifest.json"
        if manifest.is_file() and (folder / "files").is_dir():
            try:
                if json.loads(manifest.read_text(encoding="utf-8")).get("tool") == TOOL:
                    return f"already kept in quarantine (manifest {manifest})"
            except (OSError, ValueError, AttributeError):
                continue
    return ""


def fix_report(audit: AuditReport, *, policy: Policy, quarantine: Path | None = None,
               sandbox: Any | None = None, dry_run: bool = False,
               progress: Callable[[str], None] | None = None) -> AuditReport:
    """Fix what can be fixed (see the module docs); returns the report with ``fixes``."""
    from safehub._audit.compliance import is_pickle_format
    from safehub._convert.convert import TORCH_FORMATS, OutputFormat, convert

    root = check_quarantine(quarantine)
    run_dir = root / f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    manifest = _Manifest(run_dir, audit.policy)
    records: list[FixRecord] = list(audit.fixes)
    for entry in audit.files:
        if entry.verdict is not Verdict.CLEAN or not is_pickle_format(entry.format):
            continue
        original = Path(entry.path)
        source = audit.provenance.get(entry.path)
        if source is not None and source.source in _MANAGED:
            records.append(FixRecord(str(original), "skipped", _MANAGED[source.source]))
            continue
        why = _left_alone(original, root)
        if why:
            records.append(FixRecord(str(original), "skipped", why))
            continue
        if entry.format not in TORCH_FORMATS:
            records.append(FixRecord(str(original), "skipped",
                                     f"a {entry.format} file, not a torch checkpoint: "
                                     "convert it by hand"))
            continue
        output = converted_name(original, OutputFormat.SAFETENSORS.suffix)
        if os.path.lexists(output):
            records.append(FixRecord(str(original), "skipped",
                                     f"{output} exists already; compare them and remove one"))
            continue
        target = run_dir / "files" / str(original.resolve()).lstrip(os.sep)
        if dry_run:
            records.append(FixRecord(
                str(original), "planned", "convert in the sandbox, then move the original "
                "to quarantine", converted=str(output), quarantined=str(target)))
            continue
        if progress:
            progress(str(original))
        try:
            done = convert(original, output, policy=policy, sandbox=sandbox)
        except SafehubError as exc:
            records.append(FixRecord(str(original), "failed", exc.message))
            continue
        try:
            _read_back(done.output, done.tensors)
        except SafehubError as exc:
            for made in (done.output, done.metadata):  # only what this fix wrote
                if made is not None:
                    made.unlink(missing_ok=True)
            records.append(FixRecord(str(original), "failed", exc.message))
            continue
        converted_size = done.output.stat().st_size
        write_json(record_path(done.output), {
            "schema_version": "1", "tool": TOOL, "converted": done.output.name,
            "converted_sha256": done.output_sha256, "converted_size": converted_size,
            "original": os.path.abspath(original), "original_sha256": done.source_sha256,
            "quarantined": str(target), "manifest": str(manifest.path), "time": _now()})
        record = manifest.add({
            "original": os.path.abspath(original), "quarantined": str(target),
            "converted": os.path.abspath(done.output),
            "metadata": os.path.abspath(done.metadata) if done.metadata else None,
            "original_sha256": done.source_sha256, "converted_sha256": done.output_sha256,
            "time": _now(), "status": "moving"})
        try:
            _move(original, target, done.source_sha256)
        except (OSError, SafehubError) as exc:
            record["status"] = "not moved"
            manifest.save()
            reason = exc.message if isinstance(exc, SafehubError) else str(exc)
            records.append(FixRecord(str(original), "failed",
                                     f"converted to {done.output}, but the original could "
                                     f"not be moved to quarantine: {reason}",
                                     converted=str(done.output)))
            continue
        record["status"] = "moved"
        manifest.save()
        records.append(FixRecord(
            str(original), "converted", converted=str(done.output),
            metadata=str(done.metadata) if done.metadata else None, quarantined=str(target),
            original_sha256=done.source_sha256, converted_sha256=done.output_sha256,
            time=record["time"]))
    return dataclasses.replace(audit, fixes=tuple(records))


def _read_back(path: Path, count: int) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except (SafetensorError, OSError) as exc:
        raise SafehubError(f"the converted file cannot be read back: {exc}",
                           subject=str(path)) from exc
    if len(keys) != count:
        raise SafehubError(f"the converted file holds {len(keys)} tensors, not {count}",
                           subject=str(path))
