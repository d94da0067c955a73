"""Builders for the files the scanner tests attack it with.

Everything here writes bytes: hand-assembled pickles, zip archives laid out field by field
(so that the tricks loaders tolerate can be reproduced exactly), torch legacy files, tar
archives, npy headers. Payloads are harmless: they create a file named by the test in the
current directory of the process that loads them.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import pickletools
import struct
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Reduce",
    "ZipMember",
    "binunicode",
    "build_zip",
    "global_op",
    "legacy_streams",
    "marker_cmd",
    "npy_bytes",
    "os_system_p0",
    "stack_global",
    "tar_bytes",
    "torch_legacy_bytes",
    "torch_zip_members",
]


def marker_cmd(marker: str) -> str:
    """The shell command a payload runs: create ``marker`` in the working directory."""
    return f"touch {marker}"


class Reduce:
    """An object that pickles as ``func(*args)``: what ``pickle.dumps`` writes for an exploit."""

    def __init__(self, func: Callable[..., object], *args: object):
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


# --- pickle assembly ------------------------------------------------------------------------


def binunicode(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4) or BINUNICODE for longer text."""
    data = text.encode("utf-8")
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def global_op(module: str, name: str) -> bytes:
    """The text GLOBAL opcode."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL fed by two SHORT_BINUNICODE strings."""
    return binunicode(module) + binunicode(name) + b"\x93"


def string_op(text: str) -> bytes:
    """Protocol-0 STRING."""
    return b"S'" + text.encode() + b"'\n"


def os_system_p0(marker: str) -> bytes:
    """The classic protocol-0 exploit: ``posix.system('touch marker')`` then STOP."""
    return global_op("posix", "system") + b"(" + string_op(marker_cmd(marker)) + b"tR."


def call_prefix(marker: str) -> bytes:
    """Opcodes that run the payload and leave the stack as it was (result POPped)."""
    return os_system_p0(marker)[:-1] + b"0"


# --- zip archives ---------------------------------------------------------------------------


@dataclass
class ZipMember:
    """One record, with every field a loader might disagree about."""

    name: str
    data: bytes
    method: int = 0  # 0 stored, 8 deflate, 12 bzip2, 14 lzma
    local_name: str | None = None  # name written in the local header (default: name)
    local_flags: int | None = None
    central_flags: int = 0
    crc: int | None = None  # None: the real CRC-32
    compressed: bytes | None = None  # None: compress ``data`` with ``method``
    size: int | None = None  # declared uncompressed size (None: len(data))
    external_attr: int = 0  # the central record's external attributes (0x10: DOS directory)


@dataclass
class BuiltZip:
    data: bytes
    central_offset: int
    eocd_offset: int
    offsets: list[int] = field(default_factory=list)


def _compress(member: ZipMember) -> bytes:
    if member.compressed is not None:
        return member.compressed
    if member.method == 0:
        return member.data
    if member.method == 8:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(member.data) + c.flush()
    if member.method == 12:
        import bz2

        return bz2.compress(member.data)
    if member.method == 14:
        import lzma

        filters = [{"id": lzma.FILTER_LZMA1}]
        raw = lzma.compress(member.data, format=lzma.FORMAT_RAW, filters=filters)
        props = lzma._encode_filter_properties(filters[0])  # type: ignore[attr-defined]
        return struct.pack("<BBH", 9, 4, len(props)) + props + raw
    raise ValueError(member.method)


def build_zip(members: Sequence[ZipMember], *, prefix: bytes = b"", suffix: bytes = b"",
              count: int | None = None, comment_len: int | None = None,
              comment: bytes = b"") -> BuiltZip:
    """A zip archive laid out by hand. ``count`` overrides the entry count in the end
    record; ``comment_len`` its comment length field."""
    out = io.BytesIO()
    out.write(prefix)
    centrals = []
    offsets = []
    for m in members:
        payload = _compress(m)
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        name = m.name.encode()
        local_name = (m.local_name if m.local_name is not None else m.name).encode()
        lflags = m.central_flags if m.local_flags is None else m.local_flags
        offset = out.tell() - len(prefix)
        offsets.append(out.tell())
        version = 20 if m.method in (0, 8) else 63
        usize = len(m.data) if m.size is None else m.size
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", version, lflags, m.method, 0, 0,
                              crc, len(payload), usize, len(local_name), 0))
        out.write(local_name)
        out.write(payload)
        centrals.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, version,
                                    m.central_flags, m.method, 0, 0, crc, len(payload),
                                    usize, len(name), 0, 0, 0, 0, m.external_attr, offset)
                        + name)
    cd_offset = out.tell() - len(prefix)
    central = b"".join(centrals)
    out.write(central)
    eocd = out.tell()
    n = len(members) if count is None else count
    clen = len(comment) if comment_len is None else comment_len
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), cd_offset,
                          clen) + comment)
    out.write(suffix)
    return BuiltZip(out.getvalue(), cd_offset + len(prefix), eocd, offsets)


def torch_zip_members(obj: object, *, archive: str = "archive", **save_kwargs: object
                      ) -> list[ZipMember]:
    """The records of ``torch.save(obj)`` as ZipMembers (renamed under ``archive/``)."""
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **save_kwargs)  # type: ignore[arg-type]
    members = []
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        for info in zf.infolist():
            tail = info.filename.split("/", 1)[1]
            members.append(ZipMember(f"{archive}/{tail}", zf.read(info)))
    return members


# --- torch legacy and tar -------------------------------------------------------------------


def torch_legacy_bytes(obj: object) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def legacy_streams(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a legacy torch file into its five pickles and the storage bytes after them."""
    f = io.BytesIO(data)
    bounds = [0]
    for _ in range(5):
        for _op in pickletools.genops(f):  # parses without executing
            pass
        bounds.append(f.tell())
    streams = [data[a:b] for a, b in itertools.pairwise(bounds)]
    return streams, data[bounds[-1]:]


def tar_bytes(members: Sequence[tuple[str, bytes]], *, links: Sequence[tuple[str, str]] = (),
              fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar archive of regular members, plus hard links ``(name, target)``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


def torch_tar_bytes(pickle_member: bytes, *, storages: bytes | None = None,
                    tensors: bytes | None = None) -> bytes:
    """torch's oldest checkpoint format, with no storages and no tensors."""
    storages = storages if storages is not None else pickle.dumps(0, 2) + pickle.dumps([], 2)
    tensors = tensors if tensors is not None else pickle.dumps(0, 2)
    return tar_bytes([("storages", storages), ("tensors", tensors), ("pickle", pickle_member)])


def v7_header(data: bytes) -> bytes:
    """Strip the ustar magic from every header block of a tar (old v7 archives have none),
    fixing the checksums."""
    buf = bytearray(data)
    pos = 0
    while pos + 512 <= len(buf) and any(buf[pos:pos + 512]):
        block = buf[pos:pos + 512]
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        block[257:265] = b"\0" * 8
        block[148:156] = b" " * 8
        chk = sum(block)
        block[148:156] = b"%06o\0 " % chk
        buf[pos:pos + 512] = block
        pos += 512 + (size + 511) // 512 * 512
    return bytes(buf)


# --- numpy ----------------------------------------------------------------------------------


def deflate_bomb(prefix: bytes, zeros: int) -> bytes:
    """Raw deflate of ``prefix`` followed by ``zeros`` zero bytes, made without holding them."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [c.compress(prefix)]
    chunk = b"\0" * (1 << 22)
    left = zeros
    while left:
        n = min(left, len(chunk))
        out.append(c.compress(chunk[:n]))
        left -= n
    out.append(c.flush())
    return b"".join(out)


def npy_bytes(header: str, body: bytes, *, version: int = 1) -> bytes:
    """A .npy file with a literal header dict string."""
    text = header.encode("latin-1")
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(text)) + text + body


def write(path: str | os.PathLike[str], data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return os.fspath(path)
