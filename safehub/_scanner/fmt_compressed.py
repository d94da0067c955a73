"""Compressed pickles, as ``joblib.dump(..., compress=...)`` writes them.

joblib recognizes its compressors by magic bytes and decompresses before
unpickling, so the scanner does the same, streaming and bounded: the
decompressed bytes are analyzed as they are produced and never held whole.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import BinaryIO

from safehub._scanner.context import FileScan
from safehub._scanner.fmt_pickle import scan_pickle_file
from safehub._scanner.source import StreamSource

__all__ = ["compression_of", "scan_compressed"]

_OLD_JOBLIB_PREFIX = b"ZF"
_OLD_JOBLIB_HEADER = 2 + 19  # 'ZF' + hex length padded to len(hex(2**64))


def compression_of(head: bytes) -> str | None:
    """The compressor whose magic starts ``head``, if any.

    joblib decides by its own prefixes (``_detect_compressor``): an lzma-alone stream is
    ``]\\x00`` whatever its dictionary size (``]\\x00\\x10\\x00\\x00`` is a 4 KiB dictionary).
    """
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"]\x00"):
        return "lzma"
    if head.startswith(b'\x04"M\x18'):
        return "lz4"
    if head.startswith(_OLD_JOBLIB_PREFIX):
        return "joblib-zlib-legacy"  # joblib checks these two bytes alone
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    return None


class _Decompressor:
    """A read(n) interface over a decompressor that records, rather than raises, corruption."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.error = ""

    def read(self, n: int) -> bytes:
        if self.error:
            return b""
        try:
            return self._stream.read(n)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return b""


class _ZlibStream:
    """zlib data as joblib reads it: concatenated zlib streams are one stream."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self._z = zlib.decompressobj()
        self._pending = b""
        self._done = False

    def read(self, n: int) -> bytes:
        out = [self._pending[:n]]
        have = len(out[0])
        self._pending = self._pending[have:]
        while have < n and not self._done:
            if self._z.eof:
                rest = self._z.unused_data or self._fh.read(1 << 16)
                if not rest:
                    break
                self._z = zlib.decompressobj()
                data = rest
            else:
                data = self._z.unconsumed_tail or self._fh.read(1 << 16)
                if not data:
                    # Input used up: zlib may still hold output (the rest of a long match).
                    chunk = self._z.flush()
                    self._done = True
                    self._pending = chunk[n - have:]
                    out.append(chunk[: n - have])
                    break
            chunk = self._z.decompress(data, n - have)
            out.append(chunk)
            have += len(chunk)
        return b"".join(out)


def scan_compressed(scan: FileScan, fh: BinaryIO, kind: str) -> None:
    scan.format = f"compressed ({kind})"
    fh.seek(0)
    stream: BinaryIO
    # The decompressors wrap `fh` without owning it; the caller closes `fh`.
    if kind == "gzip":
        import gzip  # here: most scans meet no gzip stream, and its import costs start-up

        stream = gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[assignment]
    elif kind == "bz2":
        stream = bz2.BZ2File(fh, mode="rb")  # type: ignore[assignment]
    elif kind in ("xz", "lzma"):
        stream = lzma.LZMAFile(fh, mode="rb")  # type: ignore[assignment]  # noqa: SIM115
    elif kind == "zlib":
        stream = _ZlibStream(fh)  # type: ignore[assignment]
    elif kind == "joblib-zlib-legacy":
        # 'ZF', the hex length padded to 19 bytes, then zlib data (after one more space
        # in files from Python 2 joblib), as joblib's read_zfile does.
        fh.seek(_OLD_JOBLIB_HEADER)
        if fh.read(1) != b" ":
            fh.seek(_OLD_JOBLIB_HEADER)
        stream = _ZlibStream(fh)  # type: ignore[assignment]
    else:
        scan.add("SH116", f"{kind}-compressed data cannot be decompressed here",
                 subject=kind)
        return
    reader = _Decompressor(stream)
    source = StreamSource(reader, scan.options.max_record_size)  # type: ignore[arg-type]
    cursor, is_pickle = scan_pickle_file(scan, source, location=f"{kind} stream")
    if not is_pickle and not source.exhausted_limit:
        scan.format = "unknown"
        scan.add("SH190", f"{kind}-compressed data that is not a pickle")
        return
    # A first opcode cut at the record limit (a long BINBYTES) is no proof that nothing
    # runs: joblib reads on past it. That is "not checked" (SH191), never "not a pickle".
    scan.format = f"{scan.format if is_pickle else 'data'} ({kind})"
    if reader.error:
        scan.add("SH110", f"compressed data is corrupt: {reader.error}",
                 location=f"{kind} stream", offset=cursor.offset())
    elif source.exhausted_limit:
        scan.add("SH191", "decompressed data exceeds the record size limit",
                 location=f"{kind} stream")
