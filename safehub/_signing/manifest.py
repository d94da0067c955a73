"""The signed manifest: which files (or file shards) have which digest.

Names in a manifest are untrusted until the signature verifies, and even then they
are only accepted as plain relative POSIX paths inside the model: never absolute,
never with ``..``, ``.`` or empty components (read with ``/`` and, where a name has
one, with a backslash as the separator). The one exception is the name ``.``,
which model_signing gives the only resource of a single-file model.
"""

from __future__ import annotations

import hashlib
import importlib
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "DECIMAL",
    "DEFAULT_IGNORES",
    "DIGEST_SIZES",
    "HASH_ALIASES",
    "SINGLE_FILE",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "Serialization",
    "Shard",
    "UnsafeManifestPath",
    "check_relpath",
    "hash_factory",
    "ignore_form",
    "plain_name",
    "shard_ranges",
]

# The name model_signing gives the only resource of a single-file model.
SINGLE_FILE = "."
# What the standard's tools leave out of a folder by default (top level only).
DEFAULT_IGNORES = (".git", ".gitattributes", ".github", ".gitignore")

HASH_ALIASES = {"sha256": "sha256", "blake2b": "blake2b", "blake2": "blake2b",
                 "blake3": "blake3"}
DIGEST_SIZES = {"sha256": 32, "blake2b": 64, "blake3": 32}
DECIMAL = re.compile(r"[0-9]{1,20}")


class ManifestError(ValueError):
    """The signed statement is not a well-formed OMS manifest."""


class UnsafeManifestPath(ManifestError):
    """A name in the signed manifest is not a plain path inside the model."""


def check_relpath(name: str, *, allow_single: bool = False) -> str:
    """Return ``name`` if it is a safe model-relative POSIX path; raise otherwise."""
    if allow_single and name == SINGLE_FILE:
        return name
    if not name:
        raise UnsafeManifestPath("empty path")
    if "\x00" in name:
        raise UnsafeManifestPath(f"{name!r} contains a NUL")
    if name.startswith("/"):
        raise UnsafeManifestPath(f"{name!r} is absolute")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeManifestPath(f"{name!r} has an empty, '.' or '..' component")
    if any(not plain_name(p) for p in parts):
        raise UnsafeManifestPath(f"{name!r} read with backslashes as separators has an "
                                 "empty, '.' or '..' component")
    return name


def plain_name(component: str) -> bool:
    """Whether one path component is a plain name under both readings of a backslash.

    On POSIX a backslash is an ordinary character, and model_signing signs and verifies
    such names (``back\\slash.bin``), so safehub does too. A name that would climb or
    be absolute where a backslash separates (``a\\..\\b``, ``\\x``) is still refused: the
    same manifest must not name a file outside the model on any system that reads it.
    """
    if "\\" not in component:
        return True
    return not any(p in ("", ".", "..") for p in component.split("\\"))


def ignore_form(raw: str) -> str | None:
    """An ignore path spelled once, as model_signing joins it to the model
    (``PurePosixPath``): ``./a/``, ``a//b`` and ``a/b/`` all name ``a/b``; ``""`` and ``.``
    name the whole model (``.``). An absolute path comes back normalised, for the caller
    to resolve against the model (never re-rooted into it). ``None`` for one that
    climbs out (``..``) or is not a plain path: it ignores nothing, as in the reference.
    """
    if raw.startswith("/"):
        return posixpath.normpath(raw)
    path = str(PurePosixPath(raw))
    if path == SINGLE_FILE:
        return path
    try:
        return check_relpath(path)
    except UnsafeManifestPath:
        return None


def hash_factory(hash_type: str) -> Callable[[], Any]:
    """A constructor for the named hash (sha256, blake2b; blake3 when installed)."""
    name = HASH_ALIASES.get(hash_type)
    if name == "sha256":
        return hashlib.sha256
    if name == "blake2b":
        return hashlib.blake2b
    if name == "blake3":
        try:
            module = importlib.import_module("blake3")
        except ImportError:
            raise ManifestError("the signature uses BLAKE3; install the `blake3` package to "
                                "verify it") from None
        return module.blake3  # type: ignore[no-any-return]
    raise ManifestError(f"unsupported hash type {hash_type!r}")


def shard_ranges(size: int, shard_size: int) -> list[tuple[int, int]]:
    """model_signing's shards of a file: ``[0, s), [s, 2s), ...``, the last one shorter.

    An empty file has no shard at all.
    """
    if size <= 0:
        return []
    bounds = [*range(shard_size, size, shard_size), size]
    starts = [0, *bounds[:-1]]
    return list(zip(starts, bounds, strict=True))


@dataclass(frozen=True)
class Shard:
    """One signed byte range of a file, ``[start, end)``, and its digest (hex)."""

    start: int
    end: int
    digest: str


@dataclass(frozen=True)
class FileEntry:
    """One signed file: a whole-file digest, or its shards in order."""

    path: str
    digest: str | None = None
    shards: tuple[Shard, ...] = ()

    @property
    def signed_size(self) -> int | None:
        """The file size the shards cover (``None`` for whole-file digests)."""
        return self.shards[-1].end if self.shards else None


@dataclass(frozen=True)
class Serialization:
    """How the signer turned the model into resources (``predicate.serialization``)."""

    method: Literal["files", "shards"]
    hash_type: str
    shard_size: int | None = None
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = ()

    @property
    def algorithm(self) -> str:
        """The resource ``algorithm`` name model_signing writes for this serialization."""
        if self.method == "shards":
            return f"{self.hash_type}-sharded-{self.shard_size}"
        return self.hash_type

    def to_json(self) -> dict[str, Any]:
        """The ``serialization`` object for a statement."""
        out: dict[str, Any] = {"method": self.method, "hash_type": self.hash_type,
                               "allow_symlinks": self.allow_symlinks}
        if self.method == "shards":
            out["shard_size"] = self.shard_size
        if self.ignore_paths:
            out["ignore_paths"] = list(self.ignore_paths)
        return out


@dataclass(frozen=True)
class Manifest:
    """The verified content of a signature: the model's name, serialization and files."""

    model_name: str
    serialization: Serialization
    files: Mapping[str, FileEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    @property
    def single_file(self) -> bool:
        """Whether this is model_signing's single-file form (one resource named ``.``)."""
        return set(self.files) == {SINGLE_FILE}
