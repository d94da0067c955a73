"""Show what an unsafe pickle would do, as Python source, with fickling's decompiler.

This is explanation, not judgement: the verdict comes from the symbolic machine
(``pickle_vm``). fickling turns a stream into the equivalent Python program, which
is often the clearest way to show a reviewer what loading would run. Hostile input
can make any decompiler fail; that failure is reported as such and changes nothing.
"""

from __future__ import annotations

import ast
from typing import BinaryIO

from safehub._scanner.zipdir import ZipError, find_eocd, open_entry, read_directory

__all__ = ["MAX_DECOMPILE", "decompile", "record_bytes"]

MAX_DECOMPILE = 256 << 10  # bigger records are checkpoints, not payload demonstrations
MAX_SOURCE = 4000  # characters of decompiled source kept in a report


def decompile(data: bytes) -> str:
    """Python source equivalent to the pickle stream in ``data`` (bounded in length)."""
    from fickling.fickle import Pickled

    try:
        source = ast.unparse(Pickled.load(data).ast)
    # fickling raises assorted types on malformed streams; none of them matter here.
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError,
            RecursionError, MemoryError, AssertionError, EOFError, UnicodeError) as exc:
        return f"# fickling could not decompile this stream ({type(exc).__name__}: {exc})"
    return source if len(source) <= MAX_SOURCE else source[:MAX_SOURCE] + "\n# ... (cut)"


def record_bytes(fh: BinaryIO, size: int, location: str) -> bytes | None:
    """The bytes of the pickle at ``location`` (a zip record name, a legacy tar member, or
    "" for the file)."""
    if location in ("pickle", "storages", "tensors"):
        member = _tar_member(fh, location)
        if member is not None:
            return member
    if not location or location in ("pickle", "npy"):
        if size > MAX_DECOMPILE:
            return None
        fh.seek(0)
        return fh.read(size)
    eocd = find_eocd(fh, size)
    if eocd is None:
        return None
    try:
        directory = read_directory(fh, size, eocd)
    except ZipError:
        return None
    for entry in reversed(directory.entries):  # the last of duplicate names is what loads
        if (entry.name == location and entry.method in (0, 8) and entry.data_offset >= 0
                and entry.size <= MAX_DECOMPILE):
            src, _ = open_entry(fh, entry, MAX_DECOMPILE)
            return src.read(MAX_DECOMPILE)
    return None



def _tar_member(fh: BinaryIO, name: str) -> bytes | None:
    from safehub._scanner.fmt_tar import read_member

    return read_member(fh, name, MAX_DECOMPILE)
