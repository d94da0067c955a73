"""safehub's own cache (``<hub>/safehub``): every entry has a record with its digests.

See :mod:`safehub._fetch.cache` for the layout. A file entry must be exactly the one
file its record names, with the recorded SHA-256 and size; a checkout must hold
exactly the recorded files with their digests (no file added, removed, changed or
turned into a link). Anything else changed behind safehub's back (SH400). A
``safehub.lock`` entry for the same URL, or for the same repo at the same commit,
must agree (SH300).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from safehub._audit.context import Context
from safehub._audit.model import Discovery, Expectation, FileTarget, Provenance, RepoTarget
from safehub._audit.walk import walk_files
from safehub._fetch.cache import FileRecord, RepoRecord, file_name_for, read_record, url_key
from safehub.findings import Finding, Skipped
from safehub.rules import Severity

__all__ = ["MANAGED", "discover_safehub_cache", "is_safehub_cache"]

MANAGED = ("safehub's cache: fetch checks it against its records on every use; convert a copy "
           "with `safehub convert`")


def is_safehub_cache(root: str) -> bool:
    """Whether a folder is safehub's cache."""
    return os.path.isdir(os.path.join(root, "files")) or os.path.isdir(
        os.path.join(root, "repos"))


def discover_safehub_cache(root: str, ctx: Context) -> Discovery:
    """Targets in safehub's cache at ``root``."""
    found = Discovery(caches=[("safehub-cache", root)])
    for name in sorted(os.listdir(root)):
        full = os.path.join(root, name)
        if name == "files" and os.path.isdir(full) and not os.path.islink(full):
            found.extend(_files(full, ctx))
        elif name == "repos" and os.path.isdir(full) and not os.path.islink(full):
            found.extend(_repos(full, ctx))
        elif name in ("tmp", "locks"):
            found.skipped.append(Skipped(full, "safehub's work area (downloads in progress, "
                                         "locks)"))
        else:
            found.skipped.append(Skipped(full, "not part of safehub's cache layout"))
    return found


def _record(path: str) -> tuple[dict[str, object] | None, str]:
    try:
        return read_record(Path(path)), ""
    except ValueError as exc:
        return None, str(exc)


# --- downloaded files -------------------------------------------------------------------------


def _files(folder: str, ctx: Context) -> Discovery:
    found = Discovery()
    for shard in sorted(os.listdir(folder)):
        shard_dir = os.path.join(folder, shard)
        if not os.path.isdir(shard_dir) or os.path.islink(shard_dir):
            found.skipped.append(Skipped(shard_dir, "not part of safehub's cache layout"))
            continue
        names = set(os.listdir(shard_dir))
        keys = sorted({n[:-5] if n.endswith(".json") else n for n in names})
        for key in keys:
            entry_dir = os.path.join(shard_dir, key)
            record_path = entry_dir + ".json"
            if key in names and not os.path.isdir(entry_dir):
                found.skipped.append(Skipped(entry_dir, "not part of safehub's cache layout"))
                continue
            if f"{key}.json" in names:
                found.extend(_file_entry(key, entry_dir, record_path, ctx))
            elif key in names:
                found.extend(_unrecorded_entry(entry_dir, ctx))
    return found


def _unrecorded_entry(entry_dir: str, ctx: Context) -> Discovery:
    found = Discovery()
    for entry in walk_files(entry_dir):
        if entry.kind != "file":
            found.skipped.append(Skipped(entry.path, "not a regular file"))
            continue
        finding = ctx.finding(
            "SH401", "a download without its record (an interrupted download: fetch ignores it "
            "and downloads again)", entry.path, severity=Severity.INFO)
        found.files.append(FileTarget(entry.path, entry.path, Provenance("safehub-cache"),
                                      findings=(finding,), managed=MANAGED,
                                      name=os.path.basename(entry.path)))
    return found


def _file_entry(key: str, entry_dir: str, record_path: str, ctx: Context) -> Discovery:
    found = Discovery()
    data, problem = _record(record_path)
    record: FileRecord | None = None
    if data is not None and not problem:
        try:
            record = FileRecord.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"record {record_path} is not a file record ({exc})"
    entries = list(walk_files(entry_dir)) if os.path.isdir(entry_dir) else []
    if record is None:
        for entry in entries:
            found.files.append(FileTarget(
                entry.path, entry.path, Provenance("safehub-cache", record=record_path),
                findings=(ctx.finding("SH400", f"its cache record is unreadable: {problem}",
                                      entry.path),),
                managed=MANAGED, name=os.path.basename(entry.path)))
        return found
    provenance = Provenance("safehub-cache", repo=record.repo, url=record.url,
                            record=record_path, downloaded=record.time)
    record_wrong = ""
    if url_key(record.url) != key:
        record_wrong = f"the record is for {record.url!r}, which is not this entry's URL"
    elif record.name != file_name_for(record.url):
        record_wrong = f"the record names {record.name!r}, not the URL's file name"
    expected = [Expectation("sha256", record.sha256.lower(),
                            f"safehub cache record {record_path}", "SH400", record.size),
                *ctx.pins.for_url(record.url)]
    seen = False
    for entry in entries:
        findings: list[Finding] = []
        if record_wrong:
            findings.append(ctx.finding("SH400", record_wrong, entry.path))
        if entry.kind != "file":
            found.repos.append(RepoTarget(
                entry.path, provenance, kind="cache entry",
                findings=(ctx.finding("SH400", "a link or special file where the cache holds "
                                      "only regular files", entry.path),)))
            continue
        if entry.rel != record.name:
            findings.append(ctx.finding(
                "SH400", f"a file the record does not name (it names {record.name!r})",
                entry.path))
        else:
            seen = True
        found.files.append(FileTarget(
            entry.path, entry.path, provenance, expectations=tuple(expected),
            findings=tuple(findings), managed=MANAGED, url=record.url, name=record.name,
            repo=record.repo, model_only=False))
    if not seen and os.path.isdir(entry_dir):
        found.repos.append(RepoTarget(
            entry_dir, provenance, kind="cache entry",
            findings=(ctx.finding("SH400", f"the recorded file {record.name!r} is missing "
                                  "(fetch downloads it again on next use)", entry_dir,
                                  severity=Severity.LOW),)))
    return found


# --- checkouts --------------------------------------------------------------------------------


def _repos(folder: str, ctx: Context) -> Discovery:
    found = Discovery()
    for owner in sorted(os.listdir(folder)):
        owner_dir = os.path.join(folder, owner)
        if not os.path.isdir(owner_dir) or os.path.islink(owner_dir):
            found.skipped.append(Skipped(owner_dir, "not part of safehub's cache layout"))
            continue
        for name in sorted(os.listdir(owner_dir)):
            name_dir = os.path.join(owner_dir, name)
            if not os.path.isdir(name_dir) or os.path.islink(name_dir):
                found.skipped.append(Skipped(name_dir, "not part of safehub's cache layout"))
                continue
            entries = set(os.listdir(name_dir))
            commits = sorted({n[:-5] if n.endswith(".json") else n for n in entries})
            for commit in commits:
                found.extend(_checkout(f"{owner}/{name}", os.path.join(name_dir, commit),
                                       f"{commit}.json" in entries, ctx))
    return found


def _checkout(repo: str, checkout: str, has_record: bool, ctx: Context) -> Discovery:
    found = Discovery()
    record_path = checkout + ".json"
    record: RepoRecord | None = None
    problem = "no record (an interrupted checkout: fetch ignores it)"
    if has_record:
        data, problem = _record(record_path)
        if data is not None and not problem:
            try:
                record = RepoRecord.from_json(data)
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"record {record_path} is not a checkout record ({exc})"
    if not os.path.isdir(checkout):
        return found  # a record whose checkout was removed: fetch downloads it again
    if record is None:
        found.repos.append(RepoTarget(
            checkout, Provenance("safehub-cache", repo=repo, record=record_path),
            kind="safehub checkout",
            findings=(ctx.finding("SH400" if has_record else "SH401", problem, checkout,
                                  severity=None if has_record else Severity.INFO),)))
        for entry in walk_files(checkout):
            if entry.kind == "file":
                found.files.append(FileTarget(entry.path, entry.path,
                                              Provenance("safehub-cache", repo=repo),
                                              repo=repo, managed=MANAGED,
                                              name=os.path.basename(entry.path)))
        return found
    commit = os.path.basename(checkout)
    provenance = Provenance("safehub-cache", repo=f"{record.owner}/{record.name}",
                            ref=record.ref or None, revision=record.commit,
                            record=record_path, downloaded=record.time)
    repo_findings: list[Finding] = []
    # Checkout folders are named by the casefolded owner/name (one identity per repository).
    if f"{record.owner}/{record.name}".casefold() != repo or record.commit != commit:
        repo_findings.append(ctx.finding(
            "SH400", f"the record is for {record.owner}/{record.name}@{record.commit}, not "
            f"this checkout ({repo}@{commit})", checkout))
    seen: set[str] = set()
    for entry in walk_files(checkout):
        prov = _with_path(provenance, entry.rel)
        if entry.kind != "file":
            repo_findings.append(ctx.finding(
                "SH400", f"{entry.rel}: a link or special file, which no checkout holds",
                checkout, subject=entry.rel))
            continue
        recorded = record.files.get(entry.rel)
        findings: tuple[Finding, ...] = ()
        expected: tuple[Expectation, ...] = ()
        if recorded is None:
            findings = (ctx.finding("SH400", "a file the checkout's record does not list "
                                    "(added after the download)", entry.path),)
        else:
            seen.add(entry.rel)
            expected = (Expectation("sha256", recorded[0].lower(),
                                    f"safehub checkout record {record_path}", "SH400",
                                    recorded[1]),)
        found.files.append(FileTarget(entry.path, entry.path, prov, expectations=expected,
                                      repo=provenance.repo, findings=findings, managed=MANAGED,
                                      name=os.path.basename(entry.path)))
    for rel in sorted(set(record.files) - seen):
        repo_findings.append(ctx.finding("SH400", f"{rel}: a recorded file is missing", checkout,
                                         subject=rel))
    for locked in ctx.pins.repo(provenance.repo or repo, record.commit):
        if locked.tree_sha256 != record.tree_sha256:
            repo_findings.append(ctx.finding(
                "SH300", f"the lockfile pins {locked.repo}@{locked.commit} to tree "
                f"{locked.tree_sha256}, the checkout's record says {record.tree_sha256}",
                checkout, subject=locked.repo))
    found.repos.append(RepoTarget(checkout, provenance, kind="safehub checkout",
                                  findings=tuple(repo_findings),
                                  signature=os.path.join(checkout, "model.sig")))
    return found


def _with_path(provenance: Provenance, rel: str) -> Provenance:
    return dataclasses.replace(provenance, path_in_repo=rel)
