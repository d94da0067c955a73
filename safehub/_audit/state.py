"""The incremental state: what the last audit learned about each file, and when it held.

Each file (by real path) is remembered with its stat key (device, inode, size,
mtime_ns, ctime_ns), the digests computed for it and its scan result together with
the fingerprint of the analyzer and options that produced it. A file whose stat key
is unchanged is neither hashed nor scanned again. ``ctime`` is in the key because a
user cannot set it: content written and then back-dated with ``touch`` still changes
it, as does any rename into place.

The state file lives in the user's own state folder
(``$XDG_STATE_HOME/safehub/audit-state.json``, default ``~/.local/state``), not in
the cache being audited: whoever can write a shared cache must not be able to write
the verdicts about it. It is only a cache of work: a missing, unreadable or foreign
state file is ignored and rebuilt; ``--rescan`` ignores it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safehub._namedfile import NotARegularFile, check_replaceable, read_named
from safehub._version import __version__
from safehub.errors import SafehubError
from safehub.findings import FileReport, Finding
from safehub.rules import RULES, Severity

__all__ = [
    "STATE_VERSION",
    "Entry",
    "StatKey",
    "State",
    "analyzer_fingerprint",
    "default_state_path",
    "report_from_json",
    "report_to_json",
    "stat_key",
]

log = logging.getLogger("safehub.audit")
_MAX_STATE = 1 << 30

STATE_VERSION = 1
StatKey = tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    """What must stay the same for a file to count as unchanged."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def default_state_path() -> Path:
    """``$XDG_STATE_HOME/safehub/audit-state.json`` (default ``~/.local/state``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "safehub" / "audit-state.json"


_ANALYZER: str | None = None


def analyzer_fingerprint() -> str:
    """Changes whenever the scanner's code does: a result from another analyzer is stale."""
    global _ANALYZER
    if _ANALYZER is None:
        import safehub._scanner as scanner_pkg

        h = hashlib.sha256(__version__.encode())
        folder = Path(scanner_pkg.__file__).parent
        for source in sorted(folder.glob("*.py")):
            h.update(source.name.encode())
            h.update(source.read_bytes())
        h.update(Path(__file__).with_name("work.py").read_bytes())
        _ANALYZER = h.hexdigest()[:32]
    return _ANALYZER


def report_to_json(report: FileReport) -> dict[str, Any]:
    """A scan result without its path (the path is the state's key)."""
    return {
        "format": report.format, "size": report.size, "records": list(report.records),
        "error": report.error,
        "findings": [{"rule_id": f.rule_id, "severity": f.severity.value, "message": f.message,
                      "location": f.location, "offset": f.offset, "subject": f.subject,
                      "payload": f.payload, "allowed_by": f.allowed_by,
                      "block_at": f.block_at.value} for f in report.findings],
    }


def report_from_json(data: dict[str, Any], path: str) -> FileReport:
    """The scan result stored by :func:`report_to_json`, reported under ``path``.

    Raises ValueError, KeyError or TypeError for data that is not one.
    """
    findings = []
    for f in data["findings"]:
        if f["rule_id"] not in RULES:
            raise ValueError(f"unknown rule {f['rule_id']!r}")
        offset = f["offset"]
        findings.append(Finding(
            rule_id=str(f["rule_id"]), severity=Severity(f["severity"]),
            message=str(f["message"]), path=path, location=str(f["location"]),
            offset=None if offset is None else int(offset), subject=str(f["subject"]),
            payload=str(f["payload"]), allowed_by=str(f["allowed_by"]),
            block_at=Severity(f["block_at"])))
    return FileReport(path=path, format=str(data["format"]), size=int(data["size"]),
                      findings=tuple(findings), records=tuple(str(r) for r in data["records"]),
                      error=str(data["error"]))


@dataclass
class Entry:
    """What is known about one file while its stat key holds."""

    key: StatKey
    digests: dict[str, str] = field(default_factory=dict)
    scan: dict[str, Any] | None = None
    scanned_with: str = ""  # analyzer and options fingerprint of ``scan``

    def to_json(self) -> dict[str, Any]:
        return {"key": list(self.key), "digests": self.digests, "scan": self.scan,
                "scanned_with": self.scanned_with}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        key = tuple(int(x) for x in data["key"])
        if len(key) != 5:
            raise ValueError("bad stat key")
        digests = {str(k): str(v) for k, v in dict(data["digests"]).items()}
        scan = data.get("scan")
        return cls(key=key, digests=digests,
                   scan=dict(scan) if isinstance(scan, dict) else None,
                   scanned_with=str(data.get("scanned_with", "")))


class State:
    """The state file in memory; ``save`` writes it back atomically."""

    def __init__(self, path: Path | None, entries: dict[str, Entry] | None = None,
                 signatures: dict[str, dict[str, Any]] | None = None):
        self.path = path
        self.entries: dict[str, Entry] = entries or {}
        self.signatures: dict[str, dict[str, Any]] = signatures or {}

    @classmethod
    def load(cls, path: Path | None) -> State:
        """The state at ``path`` (None: an in-memory state that is never saved)."""
        if path is None:
            return cls(None)
        check_replaceable(path, what="audit state")  # before any work: it is written after
        try:
            raw = read_named(path, what="audit state", cap=_MAX_STATE)
        except NotARegularFile:  # a FIFO, device or folder: refused, never read
            raise
        except SafehubError as exc:  # unreadable: the audit goes on, checking everything
            log.warning("ignoring the audit state %s (%s): everything is checked again",
                        path, exc.message)
            return cls(path)
        if raw is None:
            return cls(path)
        try:
            data = json.loads(raw)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            entries = {str(k): Entry.from_json(v) for k, v in dict(data["files"]).items()}
            signatures = {str(k): dict(v) for k, v in dict(data.get("signatures", {})).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring the audit state %s (%s): everything is checked again",
                        path, exc)
            return cls(path)
        return cls(path, entries, signatures)

    def prune(self, roots: list[str], seen: set[str]) -> None:
        """Forget files below ``roots`` that were not seen (removed since)."""
        prefixes = tuple(os.path.join(os.path.realpath(r), "") for r in roots)
        for key in [k for k in self.entries if k.startswith(prefixes) and k not in seen]:
            del self.entries[key]
        for key in [k for k in self.signatures if k.startswith(prefixes) and k not in seen]:
            del self.signatures[key]

    def save(self) -> None:
        """Write atomically (private file in a private folder); no-op without a path."""
        if self.path is None:
            return
        check_replaceable(self.path, what="audit state")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {"version": STATE_VERSION, "safehub": __version__,
                "files": {k: e.to_json() for k, e in sorted(self.entries.items())},
                "signatures": dict(sorted(self.signatures.items()))}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(body, fh, separators=(",", ":"))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
