"""The results of an audit as JSON lines, written as each file is done; a rerun resumes.

One line per file, appended and flushed as soon as its result comes back (from this
machine's processes or from Dask workers): ``{"kind": "file", "real", "entry", "report",
"scanned", "hashed_bytes"}`` for a file on disk, ``{"kind": "remote", "path", "identity",
"report", "requests", "bytes"}`` for a remote one. A rerun with the same journal reads it
first: a file on disk whose stat key still matches its line, or a remote file whose
identity (URL, size, ETag or Hugging Face commit) is unchanged, is not checked again. The
final report is built from the results either way, so it equals a single uninterrupted run.
A torn last line (the run was killed mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from safehub._audit.state import Entry, report_from_json, report_to_json
from safehub._audit.work import Outcome
from safehub._format.escape import redact_secrets
from safehub._namedfile import append_named, check_replaceable, read_named
from safehub.findings import FileReport

__all__ = ["Journal"]

_MAX_JOURNAL = 16 << 30


class Journal:
    """An append-only JSON-lines file of results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, Entry] = {}
        self.remote: dict[str, tuple[str, FileReport, int, int]] = {}
        self._lock = threading.Lock()
        self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened without blocking and refused unless regular: what _load checked may have
        # been swapped for a FIFO since, whose open would wait for a reader forever.
        self._fh = append_named(path, what="journal")

    def _load(self) -> None:
        check_replaceable(self.path, what="journal")  # appended to: a regular file or a new name
        raw = read_named(self.path, what="journal", cap=_MAX_JOURNAL)  # refuses FIFOs, devices
        if raw is None:
            return
        lines = raw.decode("utf-8", "replace").splitlines()
        for line in lines:
            try:
                data = json.loads(line)
                if data.get("kind") == "file" and data.get("entry") is not None:
                    self.files[str(data["real"])] = Entry.from_json(data["entry"])
                elif data.get("kind") == "remote":
                    path = str(data["path"])
                    self.remote[path] = (str(data["identity"]),
                                         report_from_json(data["report"], path),
                                         int(data["requests"]), int(data["bytes"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn or foreign line: that file is checked again

    def _write(self, data: dict[str, Any]) -> None:
        # A journal is a file CI keeps: the credentials of a URL (a signed redirect target
        # in an error) are redacted as in every report (a redacted key is checked again).
        line = redact_secrets(json.dumps(data, separators=(",", ":"), allow_nan=False))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def add_file(self, outcome: Outcome) -> None:
        self._write({"kind": "file", "real": outcome.real,
                     "entry": outcome.entry.to_json() if outcome.entry else None,
                     "report": report_to_json(outcome.report), "scanned": outcome.scanned,
                     "hashed_bytes": outcome.hashed_bytes})

    def add_remote(self, path: str, identity: str, report: FileReport, requests: int,
                   nbytes: int) -> None:
        self._write({"kind": "remote", "path": path, "identity": identity,
                     "report": report_to_json(report), "requests": requests,
                     "bytes": nbytes})

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
