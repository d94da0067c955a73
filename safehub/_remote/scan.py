"""Remote locations to scan reports, reading only the byte ranges the scanner needs.

Each file: the first 64 KiB and the last ~68 KiB in one request (the end record search
window), then for a zip the central directory, local headers and pickle records in as few
requests as the server allows (see :mod:`safehub._remote.plan`), then the scanner's own
entry point (:func:`safehub._scanner.engine.scan_fileobj`) on a seekable view of those
bytes, fetching anything else it reads. The verdict is the scanner's on the bytes the
server sent; what it cost (requests, body bytes) is reported per file.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from safehub._fetch.http import HttpSettings, transfer_limits
from safehub._policy.policy import Policy
from safehub._remote.http import HttpRangeClient, Stats, get_json
from safehub._remote.plan import HEAD, TAIL, zip_plan
from safehub._remote.rangefile import RangeFile
from safehub._remote.target import RemoteRef, hf_endpoint, hf_resolve_url, parse, s3_endpoint
from safehub._scanner.context import ScanOptions
from safehub._scanner.engine import MODEL_SUFFIXES, scan_fileobj
from safehub.errors import FetchError, PolicyViolation
from safehub.findings import FileReport, Finding, ScanReport, Skipped, Verdict
from safehub.rules import RULES

__all__ = ["RemoteItem", "RemoteScan", "is_reported", "list_remote", "scan_batch", "scan_item",
           "scan_remote"]


@dataclass(frozen=True)
class RemoteItem:
    """One remote file: how it is reported and how it is read."""

    display: str
    kind: str  # "http" or "s3"
    url: str = ""  # http: the URL requested
    bucket: str = ""
    key: str = ""
    size: int | None = None  # when a listing said
    listed: bool = False  # found by listing (not named): unknown formats are skipped
    etag: str = ""  # S3: the listing's ETag
    endpoint: str = ""  # S3: the endpoint it was listed on (workers read from the same)

    @property
    def identity(self) -> str:
        """What must be unchanged for an earlier result to stand ("" when nothing is
        known before reading: never reused). A Hugging Face path names its commit."""
        if self.kind == "s3" and self.etag and self.size is not None:
            return f"{self.display}\x1f{self.size}\x1f{self.etag}"
        if self.display.startswith("hf://") and self.size is not None:
            return f"{self.display}\x1f{self.size}"
        return ""


@dataclass
class RemoteScan:
    """Reports, and what reading each file cost (by report path)."""

    report: ScanReport
    costs: dict[str, Stats] = field(default_factory=dict)
    listing: Stats = field(default_factory=Stats)


def _unreadable(display: str, error: str) -> FileReport:
    finding = Finding(rule_id="SH193", severity=RULES["SH193"].severity,
                      message=f"not scanned: {error}", path=display)
    return FileReport(path=display, format="unreadable", size=0, error=error,
                      findings=(finding,))


def _hf_items(ref: RemoteRef, policy: Policy, stats: Stats,
              http: HttpSettings | None = None) -> list[RemoteItem]:
    """The files of a Hugging Face repo (or one path), at the commit ``revision`` is now."""
    base = f"{hf_endpoint()}/api/models/{ref.repo}"
    info, _ = get_json(f"{base}/revision/{quote(ref.revision, safe='')}", policy, stats,
                       settings=http)
    commit = info.get("sha") if isinstance(info, dict) else None
    if not isinstance(commit, str) or not commit:
        raise FetchError("the repository's revision has no commit", subject=ref.spec)
    listing: list[tuple[str, int | None]] = []
    if ref.path and not ref.path.endswith("/"):
        # One file, or a folder: the tree of the parent says which.
        listing = [(ref.path, None)]
    url: str | None = f"{base}/tree/{commit}" + (
        f"/{quote(ref.path.rstrip('/'), safe='/')}" if ref.path else "") + "?recursive=true"
    if not listing:
        while url is not None:
            page, url = get_json(url, policy, stats, settings=http)
            if not isinstance(page, list):
                raise FetchError("the repository tree is not a list", subject=ref.spec)
            for entry in page:
                if isinstance(entry, dict) and entry.get("type") == "file" and \
                        isinstance(entry.get("path"), str):
                    size = entry.get("size")
                    listing.append((entry["path"], size if isinstance(size, int) else None))
    return [RemoteItem(f"hf://{ref.repo}@{commit}/{path}", "http",
                       url=hf_resolve_url(ref.repo, commit, path), size=size,
                       listed=not ref.path or ref.path.endswith("/"))
            for path, size in sorted(listing)]


def list_remote(spec: str, policy: Policy, stats: Stats, *,
                fs: Any | None = None, http: HttpSettings | None = None) -> list[RemoteItem]:
    """The files a remote location names (raises FetchError / PolicyViolation)."""
    ref = parse(spec)
    if ref.kind == "http":
        return [RemoteItem(ref.url, "http", url=ref.url)]
    if ref.kind == "hf":
        return _hf_items(ref, policy, stats, http)
    from safehub._remote.s3 import list_objects, s3_filesystem

    fs = fs or s3_filesystem()
    objects = list_objects(fs, ref.bucket, ref.path, policy, stats, transfer_limits(http, policy))
    named = len(objects) == 1 and objects[0][0] == ref.path
    endpoint = s3_endpoint()
    return [RemoteItem(f"s3://{ref.bucket}/{key}", "s3", bucket=ref.bucket, key=key,
                       size=size, listed=not named, etag=etag, endpoint=endpoint)
            for key, size, etag in objects]


def is_reported(item: RemoteItem, report: FileReport) -> bool:
    """Whether a listed file's result belongs in the report (as ``scan`` skips files of
    unknown content inside folders unless their name says they are models)."""
    return not (item.listed and report.verdict is Verdict.UNKNOWN and not report.error and
                not item.display.lower().endswith(MODEL_SUFFIXES))


def scan_batch(batch: tuple[list[RemoteItem], Policy, ScanOptions]
               ) -> list[tuple[RemoteItem, FileReport, Stats]]:
    """Scan a batch of remote files (what a Dask worker runs)."""
    items, policy, options = batch
    out = []
    for item in items:
        report, stats = scan_item(item, policy, options)
        out.append((item, report, stats))
    return out


def scan_item(item: RemoteItem, policy: Policy, options: ScanOptions, *,
              fs: Any | None = None, http: HttpSettings | None = None
              ) -> tuple[FileReport, Stats]:
    """Scan one remote file; errors become an unreadable report (never a pass)."""
    client: Any
    try:
        if item.kind == "s3":
            from safehub._remote.s3 import S3RangeClient, s3_filesystem

            client = S3RangeClient(fs or s3_filesystem(item.endpoint or None), item.bucket,
                                   item.key, item.size or 0, policy,
                                   endpoint=item.endpoint or None,
                                   limits=transfer_limits(http, policy))
            if item.size is None:
                raise FetchError("object size unknown", subject=item.display)
        else:
            client = HttpRangeClient(item.url, policy, settings=http)
    except (FetchError, PolicyViolation) as exc:
        return _unreadable(item.display, exc.message), Stats()
    try:
        pieces = client.fetch_suffix(HEAD, TAIL)
        size = client.size if client.size is not None else sum(len(d) for _, d in pieces)
        fh = RangeFile(client, size, pieces)
        plan = zip_plan(fh, options.max_record_size)
        if plan:
            fh.prefetch(plan)
        report = scan_fileobj(fh, item.display, size, options)  # type: ignore[arg-type]
    except (FetchError, PolicyViolation) as exc:
        return _unreadable(item.display, exc.message), client.stats
    except OSError as exc:
        return _unreadable(item.display, f"read failed: {exc}"), client.stats
    finally:
        client.close()
    return report, client.stats


def scan_remote(specs: Sequence[str], *, policy: Policy, options: ScanOptions,
                workers: int = 8, progress: Callable[[str], None] | None = None,
                fs: Any | None = None, http: HttpSettings | None = None) -> RemoteScan:
    """Scan every file the remote locations name. A location that cannot be listed is an
    unreadable entry (exit 2), never skipped. ``http``: the deadline and rate every
    request and file must keep (the fetch layer's defaults when None)."""
    result = RemoteScan(ScanReport())
    items: list[RemoteItem] = []
    files: list[FileReport] = []
    skipped: list[Skipped] = []
    for spec in specs:
        try:
            items.extend(list_remote(spec, policy, result.listing, fs=fs, http=http))
        except (FetchError, PolicyViolation) as exc:
            files.append(_unreadable(spec, exc.message))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(scan_item, item, policy, options, fs=fs, http=http)
                   for item in items]
        for item, future in zip(items, futures, strict=True):
            if progress:
                progress(item.display)
            report, stats = future.result()
            if not is_reported(item, report):
                skipped.append(Skipped(item.display, "not a model format"))
                continue
            files.append(report)
            result.costs[item.display] = stats
    result.report = ScanReport(files=tuple(files), skipped=tuple(skipped),
                               roots=tuple(specs))
    return result
