"""Comparing a model on disk with its verified manifest, reporting every difference.

Rules, in order, for each file found:

1. listed in the manifest: it must match (digest, or size and every shard), and must
   not be under an ignore path (which the reference tool would not hash: missing);
2. the signature file itself, or under an ignore path (the standard's ``.git*``
   entries, the signer's recorded ``ignore_paths``, the caller's): skipped, except
   code, which is never silently ignored;
3. anything else is unsigned: a failure, unless the caller ignores unsigned files;
   unsigned code (``*.py`` and other importable files) fails even then, unless the
   caller explicitly passes ``unsafe_ignore_unsigned_code``.

Then every listed file that was not found is missing, and every symlink, special
file or unreadable folder is a failure of its own. A shard signature checked with
``ignore_unsigned_files`` fails as a whole, as in model_signing (see ``check_model``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path, PurePosixPath

from safehub._signing.hashing import FileDigest, Provided, hash_files
from safehub._signing.manifest import (
    DEFAULT_IGNORES,
    SINGLE_FILE,
    FileEntry,
    Manifest,
    UnsafeManifestPath,
    check_relpath,
    ignore_form,
    shard_ranges,
)
from safehub._signing.result import Failure, FailureKind, Signer, Verification
from safehub._signing.tree import walk
from safehub.errors import InternalError

__all__ = ["CODE_SUFFIXES", "check_model", "inside_model", "is_code", "under_prefix"]

log = logging.getLogger("safehub.signing")

# Files Python would import or execute from a repo folder on sys.path (sources,
# bytecode that is used without its source, extension modules).
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyw", ".pyd", ".so"})


def is_code(path: str) -> bool:
    """Whether ``path`` is a file Python could import or run from a repo folder."""
    return PurePosixPath(path).suffix.lower() in CODE_SUFFIXES


def under_prefix(path: str, prefixes: Collection[str]) -> str | None:
    """The prefix (a model-relative path; ``.`` is the whole model) that ``path`` is
    under, if any."""
    for prefix in prefixes:
        if prefix == "." or path == prefix or path.startswith(prefix + "/"):
            return prefix
    return None


def _fmt(algorithm: str, digest: str | None) -> str:
    return f"{algorithm}:{digest}"


def _compare(entry: FileEntry, got: FileDigest, algorithm: str,
             shard_size: int | None) -> tuple[list[Failure], str]:
    """Failures for one listed file, and the digest string that was verified."""
    path = entry.path
    if got.error is not None:
        return [Failure(FailureKind.UNREADABLE, f"could not be read: {got.error}", path)], ""
    if entry.digest is not None:
        if got.digest != entry.digest:
            return [Failure(FailureKind.DIGEST_MISMATCH,
                            "content differs from what was signed", path,
                            expected=_fmt(algorithm, entry.digest),
                            actual=_fmt(algorithm, got.digest))], ""
        return [], _fmt(algorithm, got.digest)
    if shard_size is None:
        raise InternalError("sharded file entry without a shard size")
    expected_ranges = [(s.start, s.end) for s in entry.shards]
    if len(expected_ranges) != -(-got.size // shard_size) or \
            expected_ranges != shard_ranges(got.size, shard_size):
        signed = entry.signed_size
        msg = (f"size is {got.size} bytes, the signature covers {signed} bytes in "
               f"{len(entry.shards)} shards of {shard_size}")
        if signed == got.size:
            msg = f"the signed shards do not tile the file in {shard_size}-byte shards"
        return [Failure(FailureKind.DIGEST_MISMATCH, msg, path,
                        expected=f"{signed} bytes", actual=f"{got.size} bytes")], ""
    failures = [
        Failure(FailureKind.DIGEST_MISMATCH,
                f"bytes {want.start}-{want.end} differ from what was signed", path,
                expected=_fmt(algorithm, want.digest), actual=_fmt(algorithm, have.digest))
        for want, have in zip(entry.shards, got.shards, strict=True)
        if want.digest != have.digest]
    return failures, _fmt(algorithm, ",".join(s.digest for s in got.shards))


def _normalize_provided(provided: Mapping[str, Provided] | None, single_file: bool,
                        root: Path) -> dict[str, Provided]:
    out: dict[str, Provided] = {}
    for key, value in (provided or {}).items():
        rel = key if isinstance(key, str) else str(key)
        if os.sep == "\\":  # a Windows caller's separator; on POSIX an ordinary character
            rel = rel.replace("\\", "/")
        if single_file and rel in (SINGLE_FILE, root.name):
            out[SINGLE_FILE] = value
            continue
        try:
            out[check_relpath(rel)] = value
        except UnsafeManifestPath as exc:
            raise ValueError(f"open_files key {key!r}: {exc}") from None
    return out


def inside_model(path: str, model: Path, single_file: bool) -> str | None:
    """A signer's absolute ignore path, relative to the model when it resolves strictly
    inside it; otherwise None (it ignores nothing: never re-rooted into the model)."""
    if single_file:
        return None
    real, root = os.path.realpath(path), os.path.realpath(model)
    rel = os.path.relpath(real, root)
    if rel == "." or rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        return None
    try:
        return check_relpath(rel.replace(os.sep, "/"))
    except UnsafeManifestPath:
        return None


def check_model(manifest: Manifest, model: Path, *, signer: Signer,
                signature: Path | None, ignore_unsigned_files: bool = False,
                unsafe_ignore_unsigned_code: bool = False,
                ignore_paths: Collection[str] = (),
                ignore_git_paths: bool = True,
                open_files: Mapping[str, Provided] | None = None,
                max_workers: int | None = None,
                progress: Callable[[str], None] | None = None) -> Verification:
    """Check ``model`` against ``manifest``; see the module docstring for the rules.

    ``ignore_git_paths=False`` checks the top-level ``.git*`` entries like any other
    (model_signing's ``--no-ignore-git-paths``). Raises ``TreeError`` when the model
    path does not exist (an error, not a verdict).
    """
    tree = walk(model, skip_top=DEFAULT_IGNORES if ignore_git_paths else ())
    provided = _normalize_provided(open_files, tree.single_file, model)
    ser = manifest.serialization
    failures: list[Failure] = []
    skipped: list[str] = []
    unsigned_ignored: list[str] = []

    if ignore_unsigned_files and ser.method == "shards" and \
            any(entry.shards for entry in manifest.files.values()):
        # model_signing 1.1.1 checks only the listed resources here, by opening each
        # name as a file: a shard's name is PATH:START:END, which is no file, so it
        # refuses every such model. safehub refuses it too rather than accept what the
        # reference rejects; naming the extra files in ignore_paths works in both.
        failures.append(Failure(
            FailureKind.SIGNATURE_INVALID,
            "a shard signature cannot be checked with ignore_unsigned_files (model_signing "
            "refuses every such model); verify without it, leaving extra files out with "
            "ignore_paths (--ignore-path), or have the model signed with the files method"))

    sig_rel: str | None = None
    if signature is not None and not tree.single_file:
        try:
            sig_rel = signature.resolve().relative_to(model.resolve()).as_posix()
        except ValueError:
            sig_rel = None
    ignores: dict[str, str] = {}
    for path in ser.ignore_paths:
        inside = path if not path.startswith("/") else inside_model(path, model,
                                                                     tree.single_file)
        if inside is not None:
            ignores[inside] = "the signer's ignore_paths"
    for raw in ignore_paths:
        # Spelled as the signer's are (and as model_signing reads both): "./a/" is "a".
        form = ignore_form(raw)
        if form is not None and form.startswith("/"):
            form = inside_model(form, model, tree.single_file)
        if form is not None:
            ignores.setdefault(form, "the caller's ignore paths")

    present = dict(tree.files)
    for rel in provided:
        present.setdefault(rel, -1)
    # A path the caller supplies a descriptor for is read through that descriptor, not
    # the tree: a link there (a Hugging Face snapshot pointing at its blob) is the caller's
    # business, since it opened the file itself.
    unsafe = {rel: reason for rel, reason in tree.unsafe if rel not in provided}

    to_hash: list[str] = []
    for rel in sorted(present, key=lambda p: -present[p]):  # largest first: better balance
        if rel in manifest.files:
            reason = ignores.get(under_prefix(rel, ignores) or "")
            if reason is not None:
                # The reference leaves ignored paths out of what it hashes, so a signed
                # file under one is missing there, whatever its content.
                failures.append(Failure(
                    FailureKind.MISSING_FILE,
                    f"signed file is excluded by {reason}, so it cannot be checked", rel))
                continue
            to_hash.append(rel)
            continue
        if rel == sig_rel:
            skipped.append(rel)
            continue
        reason = ignores.get(under_prefix(rel, ignores) or "")
        if reason is not None:
            if is_code(rel) and not unsafe_ignore_unsigned_code:
                failures.append(Failure(
                    FailureKind.UNSIGNED_CODE,
                    f"unsigned code excluded by {reason}: safehub never ignores code "
                    "in a model folder", rel))
            else:
                skipped.append(rel)
            continue
        if ser.method == "shards" and present[rel] == 0 and not is_code(rel):
            # model_signing gives an empty file no shard, so it cannot be listed: an
            # empty data file is exactly what its (empty) signed shard list describes.
            # Not code: an empty numpy.py or __init__.py changes what imports, and the
            # signature says nothing about it (as in files mode, it is unsigned code).
            skipped.append(rel)
            continue
        if is_code(rel) and not unsafe_ignore_unsigned_code:
            empty = " (an empty file has no shard: sign such models with the files method)" \
                if ser.method == "shards" and present[rel] == 0 else ""
            failures.append(Failure(
                FailureKind.UNSIGNED_CODE,
                "unsigned code: the signature does not cover this file, and code is never "
                f"ignored (not even with ignore_unsigned_files){empty}", rel))
        elif ignore_unsigned_files:
            unsigned_ignored.append(rel)
            if is_code(rel):
                log.warning("unsafe: ignoring unsigned code %s in %s", rel, model)
        else:
            failures.append(Failure(FailureKind.UNSIGNED_FILE,
                                    "not covered by the signature", rel))

    for rel, reason in sorted(unsafe.items()):
        failures.append(Failure(FailureKind.UNSAFE_PATH, f"refused: {reason}", rel))
    for rel, reason in tree.unreadable:
        failures.append(Failure(FailureKind.UNREADABLE,
                                f"folder could not be listed: {reason}", rel or "."))
    for rel in sorted(set(manifest.files) - set(present)):
        if rel in unsafe:
            continue  # already reported: a signed file replaced by a link or special file
        failures.append(Failure(FailureKind.MISSING_FILE,
                                "signed file is missing from the model", rel))

    expected = {rel: (manifest.files[rel].signed_size or 0, len(manifest.files[rel].shards))
                for rel in to_hash} if ser.method == "shards" else None
    digests = hash_files(model, to_hash, single_file=tree.single_file, hash_type=ser.hash_type,
                         shard_size=ser.shard_size if ser.method == "shards" else None,
                         provided=provided, max_workers=max_workers, progress=progress,
                         expected=expected)
    algorithm = ser.hash_type
    verified: dict[str, str] = {}
    for rel in sorted(to_hash):
        problems, digest = _compare(manifest.files[rel], digests[rel], algorithm,
                                    ser.shard_size)
        failures.extend(problems)
        if not problems:
            verified[rel] = digest

    return Verification(
        model=str(model), signature=str(signature) if signature is not None else None,
        signer=signer, files=verified, failures=tuple(failures),
        skipped=tuple(sorted(skipped)), unsigned_ignored=tuple(sorted(unsigned_ignored)))
