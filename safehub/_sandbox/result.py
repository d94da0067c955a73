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
4. only then is the file mapped, copy-on-write, and each tensor is a view of the
   mapping: zero copies, and pages are read only when the caller touches them.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct
from collections.abc import Sequence
from typing import Any

from safehub._format.escape import escape_line
from safehub._sandbox import dtypes
from safehub._sandbox.errors import BadResult, clean_text
from safehub._sandbox.writer import SEALS
from safehub._scanner.fmt_safetensors import HeaderError, check_header

__all__ = ["MAX_HEADER_BYTES", "MAX_TENSORS", "read_tensors"]

MAX_HEADER_BYTES = 16 << 20  # ~100 bytes per tensor: room for 100k+ tensors, parsed in ~0.1 s
MAX_TENSORS = 100_000
MAX_DIMS = 64  # torch's own limit on dimensions
_INT64_MAX = (1 << 63) - 1


def read_tensors(fd: int, *, order: Sequence[str] | None = None,
                 max_header: int = MAX_HEADER_BYTES,
                 max_tensors: int = MAX_TENSORS) -> dict[str, Any]:
    """Validate the sealed safetensors memfd ``fd`` and return its tensors (fd is closed).

    ``order`` is the key order the child reported; it must name exactly the tensors
    of the header. Raises :class:`BadResult` for anything unexpected.
    """
    try:
        return _read(fd, order, max_header, max_tensors)
    finally:
        os.close(fd)


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


def _read(fd: int, order: Sequence[str] | None, max_header: int,
          max_tensors: int) -> dict[str, Any]:
    import torch

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

    specs: list[tuple[str, Any, list[int], int, int]] = []
    for name in names:
        info: Any = parsed[name]
        _check_name(name)
        try:
            dtype = dtypes.from_name(info["dtype"])
        except KeyError:
            raise _bad(f"tensor {_show(name)}: dtype {info['dtype']} is not accepted",
                       name) from None
        _check_shape(name, info["shape"], dtype.itemsize)
        begin, end = info["data_offsets"]
        itemsize = dtype.itemsize
        if (start + begin) % itemsize:
            raise _bad(f"tensor {_show(name)} is not aligned for {info['dtype']}", name)
        specs.append((name, dtype, info["shape"], begin, (end - begin) // itemsize))

    data = size - start
    mapping = (mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
               if data else None)
    tensors: dict[str, Any] = {}
    for name, dtype, shape, begin, count in specs:
        try:
            if count == 0 or mapping is None:
                tensors[name] = torch.empty(shape, dtype=dtype)
                continue
            t = torch.frombuffer(mapping, dtype=dtype, count=count, offset=start + begin)
            t = t.view(shape)
        except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
            # The checks above should leave torch nothing to refuse; if it still does, the
            # result is refused by name rather than crashing the parent.
            raise _bad(f"tensor {_show(name)}: torch refused it ({clean_text(exc, 300)})",
                       name) from None
        if dtype == torch.bool and bool((t.view(torch.uint8) > 1).any()):
            raise _bad(f"tensor {_show(name)}: booleans other than 0 and 1", name)
        tensors[name] = t
    return tensors
