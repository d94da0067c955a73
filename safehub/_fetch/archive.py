"""Validating and extracting repository archives (zip, and tar with any compression).

safehub downloads GitHub's *zipball*: torch.hub does too, and a zip's central
directory lets every member be checked before a single byte is decompressed.
Tarballs (plain, gzip, bzip2, xz) are accepted as well, recognised by content,
for mirrors that serve them; a tar is read twice, once to check every member and
once to extract, each pass bounded by the limits.

Every member is validated before anything is written. Refused outright:

- absolute names, ``..`` components, backslashes, control characters, names that
  collide after normalisation, members outside the single top-level folder that
  GitHub archives have;
- links of any kind (symlinks and hardlinks): code checkouts never need them, and
  refusing them is simpler and safer than proving each one stays in the tree;
- devices, fifos, sparse and any other special member; encrypted zip members;
- more members, more bytes (per member or in total) or a higher compression
  ratio than :class:`ArchiveLimits` allows (archive bombs). Declared sizes are
  checked up front and actual sizes while extracting; a zip's central directory is
  measured and its records counted before ``zipfile`` reads it (zipfile makes an
  object per record first: millions of tiny records cost the parent gigabytes), and a
  tar's extended headers (long names, pax records: tarfile reads their data whole and
  the header after one recursively) are bounded in size and in how many come in a row.

Extraction writes into a fresh folder with ``O_EXCL | O_NOFOLLOW``; on any
error that folder is removed, so nothing partial survives.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import stat
import struct
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from safehub._fetch.cache import FileDigests, remove_tree, tree_digest
from safehub._tarheaders import PaxBoundedInfo, TooManyPaxKeys
from safehub._tree import walk
from safehub.errors import FetchError

__all__ = ["ArchiveLimits", "Extracted", "extract_archive", "seal_tree"]

_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an archive may expand to (archive-bomb defence)."""

    max_members: int = 50_000
    max_total_size: int = 2 << 30  # bytes after decompression, all members together
    max_member_size: int = 1 << 30
    max_ratio: float = 200.0  # decompressed / compressed
    ratio_floor: int = 1 << 20  # ratios are judged only above this many bytes
    max_path_length: int = 1024
    max_depth: int = 64


@dataclass(frozen=True)
class Extracted:
    """What an archive held, once extracted."""

    format: str  # "zip" or "tar"
    top: str  # the single top-level folder (stripped)
    files: FileDigests
    tree_sha256: str
    comment: str  # the zip comment or pax "comment": GitHub puts the commit SHA there


@dataclass(frozen=True)
class _Member:
    rel: str  # path below the top-level folder ("" for the folder itself)
    is_dir: bool
    size: int


class _Refused(Exception):
    """A member or the archive as a whole breaks a rule."""


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits, *,
                    subject: str) -> Extracted:
    """Validate every member of ``archive``, then extract it into ``dest`` (created).

    The archive's top-level folder is stripped: ``dest`` receives its contents.
    Raises :class:`FetchError` naming ``subject`` and the offending member;
    ``dest`` does not exist afterwards unless extraction succeeded.
    """
    with open(archive, "rb") as fh:
        head = fh.read(8)
    dest.mkdir(mode=0o700)
    try:
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            return _extract_zip(archive, dest, limits)
        return _extract_tar(archive, dest, limits, head)
    except _Refused as exc:
        remove_tree(dest)
        raise FetchError(f"unsafe archive refused: {exc}", subject=subject,
                         fix="nothing was extracted; do not use this archive (report it to "
                         "the repository owner if it is theirs)") from None
    except BaseException:
        remove_tree(dest)
        raise


def seal_tree(root: Path) -> None:
    """Make an extracted tree read-only: files 0444, folders 0555 (root included)."""
    for dirpath, dirnames, filenames in walk(root, topdown=False):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o555)
    os.chmod(root, 0o555)


# --- names and the member list ------------------------------------------------------------


def _split(raw: str, limits: ArchiveLimits) -> list[str]:
    shown = ascii(raw)[:120]
    if len(raw) > limits.max_path_length:
        raise _Refused(f"member name longer than {limits.max_path_length}: {shown}")
    if _CONTROL.search(raw) or "\\" in raw:
        raise _Refused(f"member name with control characters or backslashes: {shown}")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise _Refused(f"absolute member path: {shown}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"member path escapes the archive with '..': {shown}")
    if not parts:
        raise _Refused(f"empty member name: {shown}")
    if len(parts) > limits.max_depth:
        raise _Refused(f"member path deeper than {limits.max_depth}: {shown}")
    return parts


class _Plan:
    """The validated member list, built one member at a time."""

    def __init__(self, limits: ArchiveLimits):
        self.limits = limits
        self.top: str | None = None
        self.members: list[_Member] = []
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.total = 0

    def add(self, raw: str, *, is_dir: bool, size: int) -> _Member:
        """Validate one member against the rules and what came before it."""
        limits = self.limits
        if len(self.members) >= limits.max_members:
            raise _Refused(f"more than {limits.max_members} members")
        parts = _split(raw, limits)
        if self.top is None:
            self.top = parts[0]
        elif parts[0] != self.top:
            raise _Refused(f"member outside the top-level folder {self.top!r}: {raw!a}")
        rel = "/".join(parts[1:])
        if not rel and not is_dir:
            raise _Refused(f"the top-level entry {raw!a} is not a folder")
        if is_dir:
            size = 0
        if size < 0 or size > limits.max_member_size:
            raise _Refused(f"member {raw!a} is {size} bytes, over the "
                           f"{limits.max_member_size}-byte limit")
        self.total += size
        if self.total > limits.max_total_size:
            raise _Refused(f"the archive expands to more than the {limits.max_total_size}-byte "
                           "limit")
        if rel:
            ancestors = ["/".join(parts[1:i]) for i in range(2, len(parts))]
            if rel in self.files or (not is_dir and rel in self.dirs):
                raise _Refused(f"duplicate or conflicting member {raw!a}")
            if any(a in self.files for a in ancestors):
                raise _Refused(f"member {raw!a} is below a file")
            self.dirs.update(ancestors)
            (self.dirs if is_dir else self.files).add(rel)
        member = _Member(rel, is_dir, size)
        self.members.append(member)
        return member

    def check_ratio(self, compressed: int) -> None:
        """Refuse a whole archive that expands too much for its size."""
        limits = self.limits
        if self.total > limits.ratio_floor and self.total > limits.max_ratio * max(compressed, 1):
            raise _Refused(f"compression ratio above {limits.max_ratio:g} ({self.total} bytes "
                           f"from {compressed})")


def _write(dest: Path, member: _Member, src: IO[bytes]) -> tuple[str, int]:
    target = dest / member.rel
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    h = hashlib.sha256()
    done = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(min(1 << 20, member.size - done + 1)):
            done += len(chunk)
            if done > member.size:
                raise _Refused(f"member {member.rel!r} holds more bytes than it declares")
            out.write(chunk)
            h.update(chunk)
    if done != member.size:
        raise _Refused(f"member {member.rel!r} holds {done} bytes, not the {member.size} "
                       "it declares")
    return h.hexdigest(), done


def _finish(fmt: str, plan: _Plan, files: FileDigests, comment: str) -> Extracted:
    return Extracted(fmt, plan.top or "", files, tree_digest(files), comment)


# --- zip ----------------------------------------------------------------------------------


def _zip_kind(info: zipfile.ZipInfo) -> bool:
    """True for a folder; refuses links and special files."""
    mode = info.external_attr >> 16
    ftype = stat.S_IFMT(mode)
    if info.create_system == 3 and ftype:  # Unix attributes are present
        if stat.S_ISLNK(mode):
            raise _Refused(f"symbolic link member {info.filename!a} (links are refused)")
        if stat.S_ISDIR(mode):
            return True
        if not stat.S_ISREG(mode):
            raise _Refused(f"special file member {info.filename!a} (mode {mode:o})")
    return info.filename.endswith("/")


# zipfile's own reading of the end record and the directory's layout (private names,
# unchanged since Python 3.2): the directory bounded here is the one zipfile then reads.
_ZIP: Any = zipfile
_CENTRAL = struct.Struct(_ZIP.structCentralDir)
_CENTRAL_EXTRA = 256  # room per record for an extra field and a comment


def _bound_directory(archive: Path, limits: ArchiveLimits) -> None:
    """Refuse a central directory with more records, or bigger ones, than the limits
    allow, before ``zipfile`` reads it: zipfile reads the whole directory into memory
    and makes an object per record before anything can be counted (3 million records,
    196 MiB of archive, took 25 s and 1.5 GiB; the 2 GiB archive cap holds ten times
    that). The directory is found as zipfile finds it and walked record by record."""
    with open(archive, "rb") as fh:
        try:
            end = _ZIP._EndRecData(fh)
        except OSError:
            end = None
        if not end:
            return  # zipfile refuses it
        size = end[_ZIP._ECD_SIZE]
        start = end[_ZIP._ECD_LOCATION] - size
        if end[_ZIP._ECD_SIGNATURE] == _ZIP.stringEndArchive64:
            start -= _ZIP.sizeEndCentDir64 + _ZIP.sizeEndCentDir64Locator
        most = limits.max_members * (_CENTRAL.size + limits.max_path_length + _CENTRAL_EXTRA)
        if size > most:
            raise _Refused(f"central directory of {size} bytes, more than {limits.max_members} "
                           "members can take")
        if start < 0:
            return  # zipfile refuses it
        fh.seek(start)
        done = count = 0
        while done < size:
            head = fh.read(_CENTRAL.size)
            if len(head) != _CENTRAL.size or head[:4] != _ZIP.stringCentralDir:
                return  # zipfile refuses it
            record = _CENTRAL.unpack(head)
            name = record[_ZIP._CD_FILENAME_LENGTH]
            rest = record[_ZIP._CD_EXTRA_FIELD_LENGTH] + record[_ZIP._CD_COMMENT_LENGTH]
            count += 1
            if count > limits.max_members:
                raise _Refused(f"more than {limits.max_members} members")
            if name > limits.max_path_length:
                raise _Refused(f"member name longer than {limits.max_path_length}")
            fh.seek(name + rest, os.SEEK_CUR)
            done += _CENTRAL.size + name + rest


def _extract_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> Extracted:
    _bound_directory(archive, limits)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _Refused(f"not a readable zip archive: {exc}") from exc
    with zf:
        plan = _Plan(limits)
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise _Refused(f"more than {limits.max_members} members")
        pairs: list[tuple[zipfile.ZipInfo, _Member]] = []
        for info in infos:
            if info.flag_bits & 0x1:
                raise _Refused(f"encrypted member {info.filename!a}")
            if info.compress_type not in _ZIP_METHODS:
                raise _Refused(f"member {info.filename!a} uses unsupported compression "
                               f"method {info.compress_type}")
            member = plan.add(info.filename, is_dir=_zip_kind(info), size=info.file_size)
            if member.size > limits.ratio_floor and \
                    member.size > limits.max_ratio * max(info.compress_size, 1):
                raise _Refused(f"member {info.filename!a} has a compression ratio above "
                               f"{limits.max_ratio:g}")
            pairs.append((info, member))
        plan.check_ratio(archive.stat().st_size)
        if plan.top is None:
            raise _Refused("the archive is empty")
        files: FileDigests = {}
        try:
            for info, member in pairs:
                if member.is_dir:
                    (dest / member.rel).mkdir(parents=True, exist_ok=True)
                    continue
                with zf.open(info) as src:
                    files[member.rel] = _write(dest, member, src)
        except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
                NotImplementedError, RuntimeError) as exc:
            raise _Refused(f"corrupt zip member: {exc}") from exc
        comment = zf.comment.decode("ascii", "replace").strip()
    return _finish("zip", plan, files, comment)


# --- tar ----------------------------------------------------------------------------------


class _Capped:
    """A read-only stream that refuses to yield more than ``cap`` bytes."""

    def __init__(self, raw: BinaryIO, cap: int, what: str):
        self.raw = raw
        self.cap = cap
        self.what = what
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        """Read, counting; refuses once more than the cap was read."""
        if size is None or size < 0:
            size = self.cap - self.count + 1
        data = self.raw.read(size)
        self.count += len(data)
        if self.count > self.cap:
            raise _Refused(self.what)
        return data


def _tar_kind(m: tarfile.TarInfo) -> bool:
    """True for a folder; refuses links and special members."""
    name = ascii(m.name)
    if m.issym():
        raise _Refused(f"symbolic link member {name} (links are refused)")
    if m.islnk():
        raise _Refused(f"hard link member {name} (links are refused)")
    if m.ischr() or m.isblk():
        raise _Refused(f"device member {name}")
    if m.isfifo():
        raise _Refused(f"fifo member {name}")
    if m.issparse():
        raise _Refused(f"sparse member {name}")
    if m.isdir():
        return True
    if m.isreg():
        return False
    raise _Refused(f"member {name} of unsupported type {m.type!r}")


def _decompressed(raw: BinaryIO, head: bytes) -> Any:  # a binary file object
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


# What tarfile reads into memory whole: a long name's or a pax header's data. Real ones
# hold a path and a few fields; GitHub's pax header holds the commit.
_MAX_HEADER_DATA = 1 << 20
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                 tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


# tarfile reads the header after an extended one recursively: a few thousand in a row
# ended the parent's call with a RecursionError. Real archives have two or three.
_MAX_HEADER_CHAIN = 16
_chain = threading.local()


class _BoundedInfo(PaxBoundedInfo):
    """A member header whose extension data, and run of extended headers, are bounded
    before tarfile reads them (a 512 MiB long name from a 4 MiB download took 1.6 GiB of
    the parent's memory), and its pax keys as the base class bounds them."""

    def _proc_member(self, archive: Any) -> Any:  # tarfile's hook for each header
        if self.type not in _HEADER_TYPES:
            return super()._proc_member(archive)
        if self.size > _MAX_HEADER_DATA:
            raise _Refused(f"an extended header of {self.size} bytes (at most "
                           f"{_MAX_HEADER_DATA})")
        depth = getattr(_chain, "depth", 0)
        if depth >= _MAX_HEADER_CHAIN:
            raise _Refused(f"more than {_MAX_HEADER_CHAIN} extended headers in a row")
        _chain.depth = depth + 1
        try:
            return super()._proc_member(archive)
        except TooManyPaxKeys as exc:
            raise _Refused(str(exc)) from None
        finally:
            _chain.depth = depth


@contextmanager
def _tar_stream(archive: Path, head: bytes, cap: int, what: str) -> Iterator[tarfile.TarFile]:
    with open(archive, "rb") as raw, _decompressed(raw, head) as opened:
        capped: Any = _Capped(opened, cap, what)
        try:
            with tarfile.open(fileobj=capped, mode="r|", tarinfo=_BoundedInfo) as tf:
                yield tf
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError,
                UnicodeDecodeError, ValueError) as exc:
            raise _Refused(f"not a readable archive (zip or tar): {exc}") from exc


def _extract_tar(archive: Path, dest: Path, limits: ArchiveLimits, head: bytes) -> Extracted:
    compressed = archive.stat().st_size
    # Headers and padding come on top of the members' bytes.
    overhead = 1024 * (limits.max_members + 4) + (limits.max_members + 4) * 512
    cap = min(limits.max_total_size + overhead,
              max(limits.ratio_floor, int(limits.max_ratio * max(compressed, 1))))
    what = (f"the archive decompresses to more than {cap} bytes (size limit "
            f"{limits.max_total_size}, ratio limit {limits.max_ratio:g})")
    plan = _Plan(limits)
    comment = ""
    with _tar_stream(archive, head, cap, what) as tf:
        for m in tf:
            plan.add(m.name, is_dir=_tar_kind(m), size=m.size)
        comment = str(tf.pax_headers.get("comment", "")).strip()
    plan.check_ratio(compressed)
    if plan.top is None:
        raise _Refused("the archive is empty")
    files: FileDigests = {}
    with _tar_stream(archive, head, cap, what) as tf:
        for index, m in enumerate(tf):
            if index >= len(plan.members) or plan.members[index].size != (
                    0 if m.isdir() else m.size):
                raise _Refused("the archive changed between validation and extraction")
            member = plan.members[index]
            if member.is_dir:
                (dest / member.rel).mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(m)
            if src is None:
                raise _Refused(f"member {m.name!a} has no data")
            files[member.rel] = _write(dest, member, src)
    return _finish("tar", plan, files, comment)
