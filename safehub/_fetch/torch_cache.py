"""torch.hub's own downloads as a verified source for safehub's file cache.

``torch.hub.load_state_dict_from_url`` keeps ``<model_dir>/<file_name>`` (``model_dir``
defaults to ``<hub_dir>/checkpoints``; ``file_name`` to the URL path's basename) and
records nothing else. When safehub's cache misses a URL (online: before going to the
network; offline: instead of it) that file is used only once verified as safehub
verifies its own downloads:

1. a digest tied to the URL vouches for it: a pin (policy ``downloads.pins`` for the
   URL or its own file name, the lockfile, an explicit ``hash_prefix`` of 8+ hex) or
   torch's SHA-256 prefix in the URL's own file name (8 to 64 hex digits with a letter, as
   ``safehub audit`` reads it). A caller's ``file_name`` (and a pin or prefix reached
   through it) vouches for nothing: it picks which file is read, and a file named
   ``b-<prefix of B>.pth`` proves only that it holds another URL's bytes. A file with no
   voucher is not a source (SH541);
2. the bytes, read once into a private sealed snapshot, match every expected digest
   (SH540 otherwise: the file is not imported; offline that is an error, online the URL
   is downloaded instead);
3. the scan of those same bytes is allowed by the policy (a refusal is an error, online
   or not: a checkpoint that matches its digest but fails the scan is not replaced
   silently);

and the caller has already decided the URL itself with the policy (offline: as a cache
hit). The snapshot's bytes are then installed by :class:`~safehub._fetch.weights.FileCache`
exactly as a download is (fsynced, read-only, record last), the record's ``provenance``
naming the file and the checks that vouched, so later runs and ``safehub audit`` verify
the entry against its record like any other. torch.hub's file is left as it was.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from safehub._fetch.cache import FileRecord, now_iso, read_record
from safehub._fetch.http import DownloadResult
from safehub._fetch.weights import Expected, Imported, LocalSource
from safehub._policy.decide import FileRequest
from safehub._policy.policy import Policy
from safehub.errors import FetchError, IntegrityError, PolicyViolation

__all__ = ["MIN_VOUCHING_PREFIX", "SOURCE", "checkpoint_path", "checkpoint_source",
           "imported_from", "name_prefix",
           "url_file_name"]

log = logging.getLogger("safehub.fetch")

SOURCE = "torch.hub checkpoint"

# torch's HASH_REGEX takes any "-<hex>." ("vit-224.pth" would "carry" 224): only 8+ hex
# digits with a letter are read as a digest, as safehub audit reads them.
MIN_VOUCHING_PREFIX = 8
_PREFIX = re.compile(r"-([a-f0-9]{8,64})\.")


def name_prefix(name: str) -> str | None:
    """The SHA-256 prefix a torch.hub download name carries (``resnet18-f37072fd.pth``)."""
    match = _PREFIX.search(name)
    if match is None or not re.search(r"[a-f]", match.group(1)):
        return None
    return match.group(1)


def url_file_name(url: str) -> str:
    """The name torch.hub gives ``url``'s download when no file_name is passed."""
    return os.path.basename(urlsplit(url).path)


def checkpoint_path(model_dir: Path, url: str, file_name: str | None) -> Path | None:
    """Where ``load_state_dict_from_url(url, model_dir, file_name=file_name)`` keeps the
    file (None when that name could not be a plain file in ``model_dir``)."""
    name = file_name if file_name is not None else url_file_name(url)
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return None
    return model_dir / name


def checkpoint_source(path: Path, *, url: str, expected: list[Expected], policy: Policy,
                      repo: str | None, offline: bool, max_bytes: int) -> LocalSource | None:
    """A :data:`LocalSource` over torch.hub's file at ``path``; None when there is none."""
    try:
        os.lstat(path)
    except OSError:
        return None
    return lambda out: _import(path, out, url=url, expected=expected, policy=policy,
                               repo=repo, offline=offline, max_bytes=max_bytes)


def _import(path: Path, out: BinaryIO, *, url: str, expected: list[Expected], policy: Policy,
            repo: str | None, offline: bool, max_bytes: int) -> Imported | None:
    from safehub._scanner.entry import scan_file
    from safehub._snapshot import Snapshot

    # Only what is tied to the URL vouches: its pins, and the prefix in the URL's own file
    # name. The name of the file read here may be the caller's file_name, which any caller
    # (a sandboxed hubconf too) chooses: another URL's download, whose prefix proves those
    # bytes are that URL's, not this one's. Every expected digest must still match.
    required = list(expected)
    own_name = url_file_name(url)
    prefix = name_prefix(own_name)
    if prefix is not None and not any(v.vouches and v.digest.lower() == prefix for v in required):
        required.append(Expected(prefix, f"the SHA-256 prefix in the URL's file name "
                                 f"{own_name!r}"))
    vouchers = [v for v in required if v.vouches]
    if not vouchers:
        named = "" if path.name == own_name else \
            f" (the file_name {path.name!r} it was asked under is not the URL's own)"
        return _unusable(
            path, url, offline, "SH541 torch-cache-unvouched: the URL's file name carries no "
            "SHA-256 prefix and no pin names its digest, so nothing ties these bytes to the "
            f"URL{named}",
            f"pin its SHA-256 in policy [downloads.pins] or the lockfile (`safehub lock "
            f"--url {url}` online), or run online so safehub downloads it itself")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else \
            f"it cannot be opened ({exc.strerror})"
        return _unusable(path, url, offline, f"SH541 torch-cache-unvouched: {why}",
                         "replace it with the file itself, or run online")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _unusable(path, url, offline, "SH541 torch-cache-unvouched: not a regular "
                             "file", "remove it, or run online")
        if st.st_size > max_bytes:
            return _unusable(path, url, offline, f"SH541 torch-cache-unvouched: {st.st_size} "
                             f"bytes is over downloads.max_size_mb",
                             "raise downloads.max_size_mb if the model is that large")
        snap = Snapshot.of_fd(fd, str(path))
    finally:
        os.close(fd)
    with snap:
        sha256 = snap.sha256
        wrong = [v for v in required if not v.matches(sha256)]
        if wrong:
            message = (f"SH540 torch-cache-mismatch: torch.hub's copy of {url} has SHA-256 "
                       f"{sha256}, but {wrong[0].source} requires {wrong[0].digest}; it was "
                       "not imported")
            if offline:
                raise IntegrityError(
                    message, subject=str(path),
                    fix="find out what changed it and delete it; run online (unset "
                    "SAFEHUB_OFFLINE) so safehub downloads and verifies the URL itself")
            log.warning("%s: %s; downloading it instead", path, message)
            return None
        with snap.open() as reader:
            report = scan_file(reader, url, options=policy.scan_options(repo))
        decision = policy.decide(FileRequest(report, repo))
        if not decision.allowed:
            denied = next((s.message for s in decision.trail if s.outcome == "deny"), "denied")
            raise PolicyViolation(
                f"torch.hub's copy of {url} matches {vouchers[0].source}, but policy "
                f"{decision.policy!r} refuses its scan: {denied}; it was not imported",
                subject=str(path),
                fix=f"do not load it; find out where it came from and delete it (safehub then "
                f"downloads {url} itself and scans that). {decision.fix}".strip(),
                trail=[str(s) for s in decision.trail])
        with snap.open() as reader:
            shutil.copyfileobj(reader, out, 1 << 20)
    log.info("imported %s from %s (sha256 %s, vouched for by %s)", url, path, sha256,
             "; ".join(v.source for v in vouchers))
    return Imported(
        DownloadResult(url=url, final_url=url, size=snap.size, sha256=sha256, resumed=0),
        {"source": SOURCE, "path": str(path), "vouched_by": "; ".join(v.source for v in vouchers),
         "scan": f"{report.verdict.value}, allowed by policy {decision.policy!r}",
         "imported": now_iso()})


def _unusable(path: Path, url: str, offline: bool, why: str, fix: str) -> Imported | None:
    """Offline, a torch.hub file that cannot be trusted is the error the user needs to see;
    online, the URL is downloaded instead."""
    if offline:
        raise FetchError(f"offline: {url} is not in safehub's cache, and torch.hub's copy is "
                         f"not used: {why}", subject=str(path), fix=fix)
    log.info("%s: not used as a source for %s: %s", path, url, why)
    return None


def imported_from(cache_root: Path) -> dict[str, tuple[str, int, str]]:
    """What safehub imported from torch.hub's checkpoints into the cache at ``cache_root``:
    ``{real path of torch.hub's file: (sha256, size, record path)}``. ``safehub audit``
    holds torch.hub's file to that full digest (its name carries at most a prefix)."""
    found: dict[str, tuple[str, int, str]] = {}
    files = cache_root / "files"
    if not files.is_dir() or files.is_symlink():
        return found
    for record_path in sorted(files.glob("*/*.json")):
        try:
            data = read_record(record_path)
            record = None if data is None else FileRecord.from_json(data)
        except (ValueError, KeyError, TypeError):
            continue  # the audit of safehub's own cache reports unreadable records
        if record is not None and record.provenance.get("source") == SOURCE and \
                record.provenance.get("path"):
            found[os.path.realpath(record.provenance["path"])] = (
                record.sha256, record.size, str(record_path))
    return found
