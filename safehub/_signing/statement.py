"""The in-toto statement an OMS signature signs, read and written.

Shape (predicate ``https://model_signing/signature/v1.0``)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": MODEL, "digest": {"sha256": ROOT}}],
     "predicateType": "https://model_signing/signature/v1.0",
     "predicate": {"serialization": {"method": "files"|"shards", "hash_type": "sha256",
                                     "allow_symlinks": false, "ignore_paths": [...],
                                     "shard_size": N},
                   "resources": [{"name": PATH or "PATH:START:END",
                                  "algorithm": "sha256" or "sha256-sharded-N",
                                  "digest": HEX}, ...]}}

``ROOT`` is SHA-256 over the resource digests' bytes, in the listed order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from safehub import _strictjson as strictjson
from safehub._signing.manifest import (
    DECIMAL,
    DIGEST_SIZES,
    HASH_ALIASES,
    FileEntry,
    Manifest,
    ManifestError,
    Serialization,
    Shard,
    UnsafeManifestPath,
    check_relpath,
    ignore_form,
)
from safehub.errors import InternalError

__all__ = ["PREDICATE_TYPE", "STATEMENT_TYPE", "dump_statement", "parse_statement"]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# model_signing 0.2 wrote one subject per file and no serialization (files, SHA-256); the
# reference tool still verifies such signatures, and so does safehub.
LEGACY_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"
LEGACY_MODEL_NAME = "compat-undefined-not-present"


def _shard_size(value: object) -> int:
    # Protobuf's Struct holds numbers as doubles, so model_signing writes 512.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError("serialization.shard_size is not a number")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ManifestError(f"serialization.shard_size {value!r} is not an integer")
    size = int(value)
    if size <= 0:
        raise ManifestError(f"serialization.shard_size {size} is not positive")
    return size


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):  # older payloads stored it as a string
        return value == "true"
    raise ManifestError("serialization.allow_symlinks is not a boolean")


def _ignore_paths(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError("serialization.ignore_paths is not a list of strings")
    # Absolute paths (model_signing records what the signer passed) are resolved against
    # the model when checking; one outside the model ignores nothing, as in the reference.
    return tuple(sorted({form for raw in value if (form := ignore_form(raw)) is not None}))


def _serialization(raw: object) -> Serialization:
    if not isinstance(raw, dict):
        raise ManifestError("predicate.serialization is missing")
    method = raw.get("method")
    hash_type = raw.get("hash_type")
    if not isinstance(hash_type, str) or hash_type not in HASH_ALIASES:
        raise ManifestError(f"unsupported serialization.hash_type {hash_type!r}")
    if "allow_symlinks" not in raw:  # model_signing reads it unconditionally
        raise ManifestError("serialization.allow_symlinks is missing")
    allow_symlinks = _bool(raw["allow_symlinks"])
    ignore = _ignore_paths(raw.get("ignore_paths"))
    if method == "files":
        return Serialization("files", hash_type, None, allow_symlinks, ignore)
    if method == "shards":
        return Serialization("shards", hash_type, _shard_size(raw.get("shard_size")),
                             allow_symlinks, ignore)
    raise ManifestError(f"unsupported serialization.method {method!r}")


def _algorithm_ok(algorithm: object, ser: Serialization) -> bool:
    # The reference compares each resource's algorithm name with the one its hasher
    # reports ("sha256", "blake2b", "blake3", "sha256-sharded-1024"), so only that exact
    # spelling can ever verify; BLAKE3 is never sharded there.
    name = HASH_ALIASES[ser.hash_type]
    if ser.method == "files":
        return algorithm == name
    return name != "blake3" and algorithm == f"{name}-sharded-{ser.shard_size}"


def _canonical(name: str) -> str:
    """A resource name as model_signing reads it (``PurePosixPath``): ``./a``, ``a//b`` and
    ``a/`` all name ``a/b``-style paths on disk, so they are spelled one way before
    anything is compared; ``..`` and absolute names stay refused."""
    if "\x00" in name:
        raise UnsafeManifestPath(f"{name!r} contains a NUL")
    if name.startswith("/"):
        raise UnsafeManifestPath(f"{name!r} is absolute")
    return str(PurePosixPath(name))


def _resources(raw: object, ser: Serialization) -> tuple[dict[str, FileEntry], list[bytes]]:
    if not isinstance(raw, list):
        raise ManifestError("predicate.resources is not a list")
    size = DIGEST_SIZES[HASH_ALIASES[ser.hash_type]]
    whole: dict[str, str] = {}
    shards: dict[str, dict[tuple[int, int], str]] = {}
    digests: list[bytes] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ManifestError(f"resource {i} is not an object")
        name, algorithm, digest = item.get("name"), item.get("algorithm"), item.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str):
            raise ManifestError(f"resource {i} lacks a name or digest")
        if not _algorithm_ok(algorithm, ser):
            raise ManifestError(f"resource {name!r} has algorithm {algorithm!r}, which does "
                                f"not match the serialization ({ser.algorithm})")
        try:
            value = bytes.fromhex(digest)
        except ValueError:
            raise ManifestError(f"resource {name!r} digest is not hex") from None
        if len(value) != size:
            raise ManifestError(f"resource {name!r} digest has {len(value)} bytes, "
                                f"{ser.hash_type} has {size}")
        digests.append(value)
        if ser.method == "files":
            path = check_relpath(_canonical(name), allow_single=True)
            # The reference keeps one entry per path: a repeat with the same digest says
            # nothing new; with another digest, which one counts is up to the reader.
            if whole.get(path, value.hex()) != value.hex():
                raise ManifestError(f"resource {path!r} is listed twice, with different "
                                    "digests")
            whole[path] = value.hex()
            continue
        # Exactly three colon-separated parts, as the reference splits them: a path with a
        # colon in it cannot be named in a shard manifest.
        parts = name.split(":")
        if len(parts) != 3 or not (DECIMAL.fullmatch(parts[1]) and DECIMAL.fullmatch(parts[2])):
            raise ManifestError(f"shard resource {name!r} is not PATH:START:END")
        path, start_text, rest = parts
        path = check_relpath(_canonical(path), allow_single=True)
        start, end = int(start_text), int(rest)
        ranges = shards.setdefault(path, {})
        if ranges.get((start, end), value.hex()) != value.hex():
            raise ManifestError(f"shard {name!r} is listed twice, with different digests")
        ranges[(start, end)] = value.hex()
    if ser.method == "files":
        return {p: FileEntry(p, digest=d) for p, d in whole.items()}, digests
    entries = {p: FileEntry(p, shards=tuple(Shard(s, e, d) for (s, e), d in sorted(r.items())))
               for p, r in shards.items()}
    return entries, digests


def parse_statement(payload: bytes) -> Manifest:
    """The manifest an OMS statement signs; raise :class:`ManifestError` if malformed.

    Call this only on a payload whose signature verified.
    """
    try:
        doc = strictjson.loads(payload)
    except strictjson.StrictJSONError as exc:
        raise ManifestError(f"the signed statement is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError("the signed statement is not a JSON object")
    if doc.get("_type") != STATEMENT_TYPE:
        raise ManifestError(f"not an in-toto v1 statement (_type {doc.get('_type')!r})")
    if doc.get("predicateType") == LEGACY_PREDICATE_TYPE:
        return _legacy(doc.get("subject"))
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise ManifestError(f"predicate type {doc.get('predicateType')!r} is not "
                            f"{PREDICATE_TYPE}")
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise ManifestError("the statement must have exactly one subject")
    subject = subjects[0]
    name = subject.get("name")
    root = subject.get("digest", {}).get("sha256") if isinstance(subject.get("digest"),
                                                                  dict) else None
    if not isinstance(name, str) or not isinstance(root, str):
        raise ManifestError("the subject lacks a name or a sha256 digest")
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict):
        raise ManifestError("the statement has no predicate")
    ser = _serialization(predicate.get("serialization"))
    files, digests = _resources(predicate.get("resources"), ser)
    # Compared as written (lowercase hex), as the reference compares it.
    if hashlib.sha256(b"".join(digests)).hexdigest() != root:
        raise ManifestError("the subject digest does not match the listed resources")
    return Manifest(model_name=name, serialization=ser, files=files)


def _legacy(subjects: object) -> Manifest:
    """The manifest of a model_signing 0.2 statement: each subject is a file."""
    if not isinstance(subjects, list):
        raise ManifestError("the legacy statement has no subject list")
    ser = Serialization("files", "sha256", None, False, ())
    files: dict[str, FileEntry] = {}
    for i, subject in enumerate(subjects):
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), dict):
            raise ManifestError(f"subject {i} is not an object with a digest")
        name, digest = subject.get("name"), subject["digest"].get("sha256")
        if not isinstance(name, str) or not isinstance(digest, str):
            raise ManifestError(f"subject {i} lacks a name or a sha256 digest")
        try:
            value = bytes.fromhex(digest)
        except ValueError:
            raise ManifestError(f"subject {name!r} digest is not hex") from None
        if len(value) != DIGEST_SIZES[HASH_ALIASES["sha256"]]:
            raise ManifestError(f"subject {name!r} digest is not a SHA-256")
        path = check_relpath(_canonical(name), allow_single=True)
        if path in files and files[path].digest != value.hex():
            raise ManifestError(f"subject {path!r} is listed twice, with different digests")
        files[path] = FileEntry(path, digest=value.hex())
    return Manifest(model_name=LEGACY_MODEL_NAME, serialization=ser, files=files)


def _path_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def dump_statement(model_name: str, ser: Serialization, files: Iterable[FileEntry]) -> bytes:
    """The statement JSON for signing, resources in model_signing's order (by path
    components, then shard offset)."""
    resources: list[dict[str, Any]] = []
    digests: list[bytes] = []
    for entry in sorted(files, key=lambda e: _path_key(e.path)):
        if ser.method == "files":
            if entry.digest is None:
                raise InternalError("file entry without a digest", subject=entry.path)
            items = [(entry.path, entry.digest)]
        else:
            items = [(f"{entry.path}:{s.start}:{s.end}", s.digest) for s in entry.shards]
        for name, digest in items:
            resources.append({"name": name, "algorithm": ser.algorithm, "digest": digest})
            digests.append(bytes.fromhex(digest))
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name,
                     "digest": {"sha256": hashlib.sha256(b"".join(digests)).hexdigest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": ser.to_json(), "resources": resources},
    }
    return json.dumps(statement, indent=2).encode("utf-8")
