"""The Hugging Face hub cache: ``<type>s--<org>--<name>/{blobs,snapshots,refs}``.

``snapshots/<revision>/<path>`` is what libraries load: a link to
``blobs/<digest>``. A blob is named after its content: the SHA-256 for LFS files,
the Git blob id (SHA-1 of ``blob <size>\\0<content>``) for the others, so every blob
can be checked against its own name (SH400 when it differs: changed after download).
``refs/<name>`` holds the commit a branch or tag pointed at when it was downloaded.

A snapshot entry that links outside its repo's ``blobs`` folder, or to nothing, was
not made by ``huggingface_hub``. A regular file in a snapshot (platforms without
links) has no digest to check against.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

from safehub._audit.context import Context
from safehub._audit.model import Discovery, Expectation, FileTarget, Provenance, RepoTarget
from safehub._audit.plain import plain_file_targets
from safehub._audit.walk import walk_files
from safehub.errors import InternalError
from safehub.findings import Finding, Skipped
from safehub.rules import Severity

__all__ = ["MANAGED", "discover_hf_cache", "is_hf_cache", "is_hf_repo", "parse_repo_folder"]

MANAGED = ("the Hugging Face cache: its snapshots link to content-addressed blobs; convert a "
           "copy with `safehub convert`, or publish safetensors upstream")

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def parse_repo_folder(name: str) -> tuple[str, str] | None:
    """``(repo_type, repo_id)`` for ``models--org--name``, else None."""
    kind, sep, rest = name.partition("--")
    if not sep or kind not in _TYPES or not rest:
        return None
    return _TYPES[kind], rest.replace("--", "/")


def is_hf_repo(path: str) -> bool:
    """Whether a folder is one repo of a Hugging Face cache."""
    return parse_repo_folder(os.path.basename(os.path.normpath(path))) is not None and (
        os.path.isdir(os.path.join(path, "snapshots")) or
        os.path.isdir(os.path.join(path, "blobs")))


def is_hf_cache(root: str) -> bool:
    """Whether a folder is a Hugging Face hub cache (holds at least one repo folder)."""
    try:
        return any(is_hf_repo(os.path.join(root, n)) for n in os.listdir(root))
    except OSError:
        return False


def discover_hf_cache(root: str, ctx: Context,
                      other: Callable[[str], Discovery] | None = None) -> Discovery:
    """Targets in the Hugging Face cache ``root`` (or in one of its repo folders).

    Anything beside the repo folders is not the cache's, but it is still audited:
    ``other(path)`` (default: as plain files), so a folder that merely holds a repo
    folder next to other files hides none of them."""
    if is_hf_repo(root):
        found = Discovery(caches=[("huggingface", os.path.dirname(os.path.normpath(root)))])
        found.extend(_repo(root, ctx))
        return found
    found = Discovery(caches=[("huggingface", root)])
    for name in sorted(os.listdir(root)):
        full = os.path.join(root, name)
        if name in (".locks", "version.txt", "CACHEDIR.TAG"):
            continue
        if os.path.isdir(full) and not os.path.islink(full) and is_hf_repo(full):
            found.extend(_repo(full, ctx))
        elif os.path.islink(full):
            found.skipped.append(Skipped(full, "symbolic link (not followed)"))
        elif other is not None:
            found.extend(other(full))
        else:
            found.extend(plain_file_targets(full, Provenance("local")))
    return found


def _refs(repo_dir: str) -> dict[str, list[str]]:
    """commit -> names of the refs that point at it."""
    out: dict[str, list[str]] = {}
    refs_dir = os.path.join(repo_dir, "refs")
    if not os.path.isdir(refs_dir):
        return out
    for entry in walk_files(refs_dir):
        if entry.kind != "file":
            continue
        try:
            with open(entry.path, encoding="utf-8") as fh:
                commit = fh.read(256).strip()
        except (OSError, UnicodeDecodeError):
            continue
        out.setdefault(commit, []).append(entry.rel)
    return out


def _blob_expectation(blob: str) -> tuple[Expectation, ...]:
    name = os.path.basename(blob)
    if _SHA256.match(name):
        return (Expectation("sha256", name, "its Hugging Face blob name (LFS SHA-256)",
                            "SH400"),)
    if _SHA1.match(name):
        return (Expectation("git-sha1", name, "its Hugging Face blob name (Git blob id)",
                            "SH400"),)
    return ()


def _repo(repo_dir: str, ctx: Context) -> Discovery:
    found = Discovery()
    parsed = parse_repo_folder(os.path.basename(os.path.normpath(repo_dir)))
    if parsed is None:
        raise InternalError("not a Hugging Face repository folder", subject=repo_dir)
    repo_type, repo_id = parsed
    refs = _refs(repo_dir)
    blobs_dir = os.path.join(repo_dir, "blobs")
    blobs_real = os.path.realpath(blobs_dir)
    referenced: set[str] = set()
    snapshots = os.path.join(repo_dir, "snapshots")
    revisions = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
    for revision in revisions:
        snap = os.path.join(snapshots, revision)
        if os.path.islink(snap) or not os.path.isdir(snap):
            found.skipped.append(Skipped(snap, "not a snapshot folder"))
            continue
        names = tuple(sorted(refs.get(revision, [])))
        base = Provenance("huggingface", repo=repo_id, repo_type=repo_type, revision=revision,
                          refs=names)
        members: list[tuple[str, str]] = []
        for entry in walk_files(snap):
            target = _snapshot_entry(entry.path, entry.rel, entry.kind, blobs_real, base,
                                     repo_type, repo_id, revision, names, ctx)
            if target is None:
                found.skipped.append(Skipped(entry.path, "not a regular file"))
                continue
            found.files.append(target)
            if not target.error:
                members.append((entry.rel, target.real))
                referenced.add(target.real)
        signature = os.path.join(snap, "model.sig")
        found.repos.append(RepoTarget(
            snap, base, kind="huggingface snapshot", members=tuple(members),
            signature=signature if os.path.lexists(signature) else None))
    if os.path.isdir(blobs_dir):
        for entry in walk_files(blobs_dir):
            real = os.path.realpath(entry.path)
            if real in referenced:
                continue
            if entry.path.endswith(".incomplete"):
                found.skipped.append(Skipped(entry.path, "incomplete download"))
                continue
            if entry.kind != "file":
                found.skipped.append(Skipped(entry.path, "not a regular file"))
                continue
            found.files.append(FileTarget(
                entry.path, entry.path,
                Provenance("huggingface", repo=repo_id, repo_type=repo_type),
                expectations=_blob_expectation(entry.path), managed=MANAGED,
                name=os.path.basename(entry.path)))
    return found


def _snapshot_entry(path: str, rel: str, kind: str, blobs_real: str, base: Provenance,
                    repo_type: str, repo_id: str, revision: str, refs: tuple[str, ...],
                    ctx: Context) -> FileTarget | None:
    provenance = dataclasses.replace(base, path_in_repo=rel)
    url = f"https://huggingface.co/{_URL_PREFIX[repo_type]}{repo_id}/resolve/{revision}/{rel}"
    pins: list[Expectation] = list(ctx.pins.for_url(url))
    for ref in refs:
        pins.extend(ctx.pins.for_url(url.replace(f"/resolve/{revision}/", f"/resolve/{ref}/")))
    name = os.path.basename(rel)
    if kind == "special":
        return None
    if kind == "file":
        finding = ctx.finding(
            "SH401", "a regular file in a snapshot (not a link to a content-addressed blob): "
            "there is no recorded digest to check it against", path,
            severity=Severity.LOW if ctx.digests_required and not pins else Severity.INFO)
        return FileTarget(path, path, dataclasses.replace(provenance, url=url),
                          expectations=tuple(pins), findings=(finding,), managed=MANAGED,
                          url=url, name=name)
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return FileTarget(path, path, provenance, managed=MANAGED, url=url, name=name,
                          error=f"the snapshot entry links to a missing blob "
                                f"({os.readlink(path)})")
    findings: list[Finding] = []
    expected: tuple[Expectation, ...] = ()
    if os.path.dirname(real) != blobs_real:
        findings.append(ctx.finding(
            "SH400", f"the snapshot entry links outside its repo's blobs folder, to {real}: "
            "huggingface_hub never makes such links", path, subject=real))
    else:
        expected = _blob_expectation(real)
    return FileTarget(path, real, dataclasses.replace(provenance, url=url),
                      expectations=(*expected, *pins), findings=tuple(findings),
                      managed=MANAGED, url=url, name=name)
