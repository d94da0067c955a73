"""Parent side of the result: check the child's memfd, then map its tensors.

The memfd comes from a process that ran hostile code, so every fact about it is
checked before anything is parsed or mapped, cheapest first:

1. it is a regular file carrying all four seals (no write, shrink, grow, or
   re-sealing), so nothing can change or truncate it under the mapping (a
   truncated mapping would crash the parent with SIGBUS);
2. the header length is capped before the header is read, and the number of
   tensors is bounded by counting ``{`` before the JSON is parsed;
3. the header passes the scanner's safetensors consistency checks (known dtypes,
   shapes times sizes equal to each byte range, ranges contiguous and covering the
   data exactly, no duplicate keys), and every tensor is aligned for its type;
4. booleans are checked on the raw bytes (0 or 1 only);
5. only then is the file mapped, copy-on-write, and each tensor is a view of the
   mapping: zero copies, and pages are read only when the caller touches them.

Steps 1-4 need no torch (:func:`check_result`): the CLI writes a checked result as a
safetensors file (a header rebuilt from the checked entries, then the data bytes)
without importing torch in its own process.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import stat
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from safehub._format.escape import escape_line
from safehub._sandbox import dtypes
from safehub._sandbox.errors import BadResult, clean_text
from safehub._sandbox.writer import SEALS
from safehub._scanner.fmt_safetensors import HeaderError, check_header

__all__ = ["MAX_HEADER_BYTES", "MAX_TENSORS", "TensorFile", "TensorSpec", "check_result",
           "new_result_file", "read_tensors"]

MAX_HEADER_BYTES = 16 << 20  # ~100 bytes per tensor: room for 100k+ tensors, parsed in ~0.1 s
MAX_TENSORS = 100_000
MAX_DIMS = 64  # torch's own limit on dimensions
_INT64_MAX = (1 << 63) - 1


def new_result_file() -> int:
    """An empty memfd that can be sealed, for one load's result (the parent makes it and
    sends it with the call: the sandbox itself may not create memory files)."""
    return os.memfd_create("safehub-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def read_tensors(fd: int, *, order: Sequence[str] | None = None,
                 max_header: int = MAX_HEADER_BYTES,
                 max_tensors: int = MAX_TENSORS) -> dict[str, Any]:
    """Validate the sealed safetensors memfd ``fd`` and return its tensors (fd is closed).

    ``order`` is the key order the child reported; it must name exactly the tensors
    of the header. Raises :class:`BadResult` for anything unexpected.
    """
    with check_result(fd, order=order, max_header=max_header,
                      max_tensors=max_tensors) as checked:
        return checked.tensors()


def check_result(fd: int, *, order: Sequence[str] | None = None,
                 max_header: int = MAX_HEADER_BYTES,
                 max_tensors: int = MAX_TENSORS) -> TensorFile:
    """Validate the sealed safetensors memfd ``fd`` without importing torch.

    Returns a :class:`TensorFile` that owns ``fd`` (closed on error, or by
    :meth:`TensorFile.close`). Raises :class:`BadResult` for anything unexpected.
    """
    try:
        specs, size, start = _check(fd, order, max_header, max_tensors)
    except BaseException:
        os.close(fd)
        raise
    return TensorFile(fd, size, start, specs)


@dataclass(frozen=True)
class TensorSpec:
    """One checked tensor entry: where its bytes lie in the data section."""

    name: str
    dtype: str  # the safetensors name (F32, BF16...)
    shape: tuple[int, ...]
    begin: int
    end: int


class TensorFile:
    """A validated result file: its tensors as torch views (:meth:`tensors`), or its
    bytes written out as a safetensors file (:meth:`write`), which needs no torch. An
    entry that is not a tensor of the result (a TorchScript archive) is taken out as
    bytes with :meth:`take`, also without torch.

    Owns the memfd; the descriptor is closed by :meth:`close`, by ``with``, or when
    the object is collected.
    """

    def __init__(self, fd: int, size: int, start: int, specs: list[TensorSpec]):
        self.fd = fd
        self.size = size
        self.start = start
        self.specs = specs
        self._taken = False  # an entry was taken out: the data section is compacted
        self._closer = weakref.finalize(self, os.close, fd)

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.specs)

    def close(self) -> None:
        self._closer()

    def take(self, name: str) -> tuple[TensorSpec, bytes]:
        """Take the checked entry ``name`` out of the file: it is neither written by
        :meth:`write` nor mapped by :meth:`tensors`. Returns its spec and its bytes, read
        from the memfd by the checked offsets (no torch). Raises KeyError if absent."""
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None:
            raise KeyError(name)
        length = spec.end - spec.begin
        chunks, done = [], 0
        while done < length:  # one pread returns at most ~2 GiB
            chunk = os.pread(self.fd, min(length - done, 1 << 30), self.start + spec.begin + done)
            if not chunk:
                raise _bad(f"tensor {_show(name)}: the file ended early", name)
            chunks.append(chunk)
            done += len(chunk)
        data = b"".join(chunks)
        self.specs.remove(spec)
        self._taken = True
        return spec, data

    def _layout(self) -> list[tuple[TensorSpec, int]]:
        """Each entry with its offset in the written data section. As checked, unless an
        entry was taken out: then the rest are packed without the gap, largest item size
        first (each length is a multiple of its item size, so every entry stays aligned
        in a data section that starts 8-aligned)."""
        if not self._taken:
            return [(spec, spec.begin) for spec in self.specs]
        offset, layout = 0, []
        for spec in sorted(self.specs, key=lambda s: (-dtypes.ITEMSIZE[s.dtype], s.begin)):
            layout.append((spec, offset))
            offset += spec.end - spec.begin
        return layout

    def header(self) -> bytes:
        """The header safehub writes: rebuilt from the checked entries (never the
        child's own bytes), in the reported order, ``{"format": "pt"}`` metadata as
        ``safetensors.torch.save_file`` writes, padded so the data starts 8-aligned."""
        return self._header(dict((spec.name, begin) for spec, begin in self._layout()))

    def _header(self, offsets: dict[str, int]) -> bytes:
        entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        for spec in self.specs:
            begin = offsets[spec.name]
            entries[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape),
                                  "data_offsets": [begin, begin + spec.end - spec.begin]}
        head = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
        return head + b" " * (-(8 + len(head)) % 8)

    def write(self, path: str | os.PathLike[str]) -> int:
        """Write the tensors to ``path`` as safetensors, atomically: the rebuilt header,
        then the data section copied from the memfd in the kernel. Returns the size."""
        from safehub._tree import write_atomic

        layout = self._layout()
        head = self._header(dict((spec.name, begin) for spec, begin in layout))
        # What to copy: the whole checked data section, or (an entry taken out) each
        # remaining entry's bytes in the new order.
        ranges = ([(self.start, self.size - self.start)] if not self._taken else
                  [(self.start + spec.begin, spec.end - spec.begin) for spec, _ in layout])
        data = sum(length for _, length in ranges)

        def write(fh: BinaryIO, _tmp: str) -> None:
            fh.write(struct.pack("<Q", len(head)) + head)
            fh.flush()
            out = fh.fileno()
            for offset, left in ranges:
                while left:
                    moved = os.sendfile(out, self.fd, offset, min(left, 1 << 30))
                    if moved <= 0:
                        raise OSError(errno.EIO, "the result file ended early")
                    offset += moved
                    left -= moved

        write_atomic(Path(path), write)
        return 8 + len(head) + data

    def tensors(self) -> dict[str, Any]:
        """The tensors as views of a private (copy-on-write) mapping of the file."""
        import torch

        mapping = (mmap.mmap(self.fd, self.size, mmap.MAP_PRIVATE,
                             mmap.PROT_READ | mmap.PROT_WRITE)
                   if self.size > self.start else None)
        tensors: dict[str, Any] = {}
        for spec in self.specs:
            dtype = dtypes.from_name(spec.dtype)
            count = (spec.end - spec.begin) // dtype.itemsize
            try:
                if count == 0 or mapping is None:
                    tensors[spec.name] = torch.empty(spec.shape, dtype=dtype)
                    continue
                t = torch.frombuffer(mapping, dtype=dtype, count=count,
                                     offset=self.start + spec.begin)
                tensors[spec.name] = t.view(spec.shape)
            except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
                # The checks should leave torch nothing to refuse; if it still does, the
                # result is refused by name rather than crashing the parent.
                raise _bad(f"tensor {_show(spec.name)}: torch refused it "
                           f"({clean_text(exc, 300)})", spec.name) from None
        return tensors


def _bad(message: str, key: str | None = None) -> BadResult:
    return BadResult(f"the sandbox returned a malformed result: {message}",
                     keys=() if key is None else (escape_line(key, 200),),
                     fix="do not use this repository; its code tampered with the result")


def _show(name: str) -> str:
    return f"'{escape_line(name, 200)}'"


def _check_name(name: str) -> None:
    """A key must survive being written back out: safetensors keys are UTF-8, so a lone
    surrogate (valid in JSON escapes, not in UTF-8) is refused here, by name."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"tensor {_show(name)}: the name is not valid Unicode (lone surrogate)",
                   name) from None


def _check_shape(name: str, shape: list[int], itemsize: int) -> None:
    """Refuse shapes whose sizes overflow what torch (int64 sizes, and the running
    product of sizes times the item size) can represent. A shape holding a 0 describes
    no bytes, so it passes the byte-range checks whatever its other sizes are."""
    if len(shape) > MAX_DIMS:
        raise _bad(f"tensor {_show(name)}: {len(shape)} dimensions (at most {MAX_DIMS})",
                   name)
    product = itemsize
    for d in shape:
        if d > _INT64_MAX:
            raise _bad(f"tensor {_show(name)}: size {d} overflows 64 bits", name)
        product *= max(d, 1)
        if product > _INT64_MAX:
            raise _bad(f"tensor {_show(name)}: shape {shape} overflows 64 bits", name)


def _check(fd: int, order: Sequence[str] | None, max_header: int,
           max_tensors: int) -> tuple[list[TensorSpec], int, int]:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise _bad("the result descriptor is not a memory file")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise _bad("the result file cannot be sealed (not a memfd)") from None
    if seals & SEALS != SEALS:
        raise _bad(f"the result memfd is not sealed (seals {seals:#x}, need {SEALS:#x})")
    size = os.fstat(fd).st_size  # fixed from here on: the size is sealed
    if size < 8:
        raise _bad(f"{size} bytes is shorter than a safetensors header")
    (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if n > max_header:
        raise _bad(f"header of {n} bytes exceeds the {max_header}-byte limit")
    if n > size - 8:
        raise _bad(f"header of {n} bytes runs past the end of the {size}-byte file")
    header = os.pread(fd, n, 8)
    if len(header) != n:
        raise _bad("short read of the header")
    # Every tensor entry is a JSON object, so it needs a literal '{': an upper bound on
    # the tensor count that costs one pass, before a possibly huge parse.
    if header.count(b"{") - 1 > max_tensors:
        raise _bad(f"more than {max_tensors} tensors")
    start = 8 + n
    try:
        parsed = check_header(header, size - start)
    except HeaderError as exc:
        raise _bad(str(exc)) from None
    parsed.pop("__metadata__", None)
    names = list(parsed)
    if order is not None:
        if sorted(order) != sorted(names) or len(set(order)) != len(order):
            raise _bad("the reported key order does not match the tensors in the file")
        names = list(order)

    specs: list[TensorSpec] = []
    for name in names:
        info: Any = parsed[name]
        _check_name(name)
        itemsize = dtypes.ITEMSIZE.get(info["dtype"])
        if itemsize is None:
            raise _bad(f"tensor {_show(name)}: dtype {info['dtype']} is not accepted", name)
        _check_shape(name, info["shape"], itemsize)
        begin, end = info["data_offsets"]
        if (start + begin) % itemsize:
            raise _bad(f"tensor {_show(name)} is not aligned for {info['dtype']}", name)
        if info["dtype"] == "BOOL" and end > begin:
            _check_booleans(fd, name, start + begin, end - begin)
        specs.append(TensorSpec(name, info["dtype"], tuple(info["shape"]), begin, end))
    return specs, size, start


def _check_booleans(fd: int, name: str, offset: int, length: int) -> None:
    """torch reads any byte other than 0 and 1 as an undefined boolean: refused here, on
    the raw bytes, so the file written without torch holds only what torch accepts."""
    done = 0
    while done < length:
        chunk = os.pread(fd, min(length - done, 1 << 24), offset + done)
        if not chunk:
            raise _bad(f"tensor {_show(name)}: the file ended early", name)
        if chunk.translate(None, b"\x00\x01"):
            raise _bad(f"tensor {_show(name)}: booleans other than 0 and 1", name)
        done += len(chunk)
