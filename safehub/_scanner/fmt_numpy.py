"""numpy ``.npy`` arrays: a literal header, then raw data or (object dtype) one pickle."""

from __future__ import annotations

import io
import re
import struct
import tokenize

from safehub._scanner.context import FileScan
from safehub._scanner.judge import Loader, judge_stream
from safehub._scanner.pickle_vm import PickleCursor
from safehub._scanner.source import ByteSource, Truncated

__all__ = ["NPY_MAGIC", "scan_npy"]

NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 16  # numpy itself refuses headers over 10,000 bytes by default
_TYPESTR = re.compile(r"^[<>|=]?([?bBiufcmMOSUVa])(\d*)(?:\[\w+\])?$")
_FIXED = {"?": 1, "b": 1, "B": 1}
# What parsing a header byte costs in opcodes of the file's budget: ast.literal_eval and
# the dtype walk take about twice an opcode's time per byte of a many-field header.
_HEADER_BYTE_COST = 2
# Header bytes parsed free of charge: numpy writes 118 for a plain array, and an .npz of
# 50,000 arrays must not spend the budget on headers. A shorter header costs about what
# its zip record does; only longer ones are charged.
_FREE_HEADER = 256

_MAX_RECORDS = 65536  # arrays appended to one file that are analyzed


class _BadHeader(Exception):
    pass


def scan_npy(scan: FileScan, src: ByteSource, location: str, base: int, *,
             declared: int | None = None) -> None:
    """Check one .npy stream (a file, or a member of an .npz archive).

    ``declared`` is the uncompressed size a zip directory gives a compressed member: numeric
    data is then checked against it instead of being inflated (numbers cannot run code,
    and a decompression bomb would cost its full size).
    """
    cursor = PickleCursor(src, base=base, limits=scan.options.limits)
    record = 1
    # numpy.save appends to an open file and numpy.load reads one array per call (numpy's
    # own documented way to keep several arrays in one file): each following .npy record
    # is read and checked as that next call reads it.
    while _scan_record(scan, cursor, location if record == 1 else
                       f"{location or 'npy'} (array {record})", declared):
        record += 1
        if record > _MAX_RECORDS:
            scan.add("SH191", f"more than {_MAX_RECORDS} arrays follow one another; the rest "
                     "was not analyzed", location=location, offset=cursor.offset())
            return


def _scan_record(scan: FileScan, cursor: PickleCursor, location: str,
                 declared: int | None) -> bool:
    """Check one .npy record; True when another one follows it, as numpy.load reads on."""
    where = location or "npy"
    base = cursor.offset()
    read_header = False  # the cursor is past the header: the data (or a pickle) follows
    try:
        magic = cursor.take(8)
        if magic[:6] != NPY_MAGIC:
            raise _BadHeader("missing the numpy magic string")
        major = magic[6]
        if major == 1:
            header_len = struct.unpack("<H", cursor.take(2))[0]
        elif major in (2, 3):
            header_len = struct.unpack("<I", cursor.take(4))[0]
        else:
            raise _BadHeader(f"unsupported format version {major}.{magic[7]}")
        if header_len > _MAX_HEADER:
            # numpy.load(allow_pickle=True) lifts its header limit: it reads on.
            try:
                cursor.skip(header_len)
                read_header = True
            except Truncated:
                pass  # numpy fails on the short header too
            raise _BadHeader(f"header of {header_len} bytes is larger than {_MAX_HEADER}")
        if _header_budget_spent(scan, header_len):
            scan.add("SH191", f"analysis budget of {scan.options.limits.max_ops} opcodes spent "
                     "before this .npy header; it was not parsed", location=location,
                     offset=base)
            return False
        raw = cursor.take(header_len)
        read_header = True
        try:
            text = raw.decode("utf-8" if major == 3 else "latin-1")
        except UnicodeDecodeError:
            raise _BadHeader("header is not UTF-8") from None
        itemsize, has_object, count = _parse_header(text, py2=major <= 2)
    except Truncated:
        scan.add("SH111", "the .npy header is truncated", location=location, offset=base)
        return False
    except _BadHeader as exc:
        scan.add("SH131", f".npy header: {exc}", location=location, offset=base)
        if read_header:
            _probe_undecided_data(scan, cursor, location)
        return False
    if has_object:
        scan.add("SH130", "object array: its data is a pickle", location=location,
                 offset=cursor.offset(), subject="numpy-object-array")
        scan.records.append(f"{where} (object data)")
        result = cursor.stream()
        judge_stream(scan, result, location, Loader.PICKLE)
        if result.stopped and not cursor.at_eof():
            scan.add("SH113", "bytes follow the object array's pickle", location=location,
                     offset=cursor.offset())
        return False
    nbytes = count * itemsize
    if declared is not None:
        end = cursor.offset() - base + nbytes
        if end > declared:
            scan.add("SH111", f"array data is shorter than its header's {nbytes} bytes",
                     location=location, offset=cursor.offset())
        elif end < declared:
            scan.add("SH113", "bytes follow the array data", location=location, offset=end)
        return False
    try:
        cursor.skip(nbytes)
    except Truncated:
        scan.add("SH111", f"array data is shorter than its header's {nbytes} bytes",
                 location=location, offset=cursor.offset())
        return False
    if cursor.at_eof():
        return False
    head = cursor.peek(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        return True
    scan.add("SH113", "bytes follow the array data", location=location,
             offset=cursor.offset())
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        _judge_following_pickle(scan, cursor, location)
    return False


def _judge_following_pickle(scan: FileScan, cursor: PickleCursor, location: str) -> None:
    """numpy.load called again on the same open file reads on from the array's end: a
    .npy record, a zip, or anything else as a pickle (allow_pickle=True). Bytes that
    import or call are judged as that pickle (SH113 alone passes a permissive policy)."""
    result = cursor.stream()
    if (result.globals or result.computed or result.calls or result.extensions
            or result.persistent or result.limit):
        judge_stream(scan, result, location, Loader.PICKLE)


def _header_budget_spent(scan: FileScan, header_len: int) -> bool:
    """Charge parsing a long header to the file's opcode budget, as its cost in opcodes:
    an .npz can list one 64 KiB header under tens of thousands of names, each parsed anew
    (a 3 MB archive took over an hour). Whether the budget is spent."""
    budget = scan.options.limits.budget
    if budget is None:
        return False
    budget.left -= _HEADER_BYTE_COST * max(0, header_len - _FREE_HEADER)
    return budget.left < 0


def _probe_undecided_data(scan: FileScan, cursor: PickleCursor, location: str) -> None:
    """After a header this scanner cannot decide, numpy may still read it (a dtype spelled
    ``'object'``, ``'i4,O'``, ``('O', (2,))``, a header over the size limit) and, for an
    object dtype, unpickle what follows. Those bytes are read as that pickle: numbers fail
    within a few opcodes having done nothing; a stream that imports or calls is judged."""
    result = cursor.stream()
    if not (result.globals or result.computed or result.calls or result.extensions
            or result.persistent or result.limit):
        return
    scan.add("SH130", "the data after an undecided header reads as a pickle numpy.load "
             "would run for an object dtype", location=location, offset=result.start,
             subject="numpy-object-array")
    judge_stream(scan, result, location, Loader.PICKLE)


def _parse_header(text: str, *, py2: bool = False) -> tuple[int, bool, int]:
    import ast  # imported here: most scans never meet a .npy header

    try:
        header = ast.literal_eval(text)
    except SyntaxError:
        if not py2:
            raise _BadHeader("not a Python literal (SyntaxError)") from None
        # Files written by Python 2 spell shapes with longs ("(2L,)"); numpy drops the L.
        header = _literal(_drop_long_suffixes(text))
    except (ValueError, MemoryError, RecursionError, TypeError) as exc:
        raise _BadHeader(f"not a Python literal ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _BadHeader("must be a dict with keys descr, fortran_order and shape")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _BadHeader(f"shape {shape!r} is not a tuple of non-negative ints")
    if not isinstance(header["fortran_order"], bool):
        raise _BadHeader("fortran_order is not a bool")
    itemsize, has_object = _descr_size(header["descr"], 0)
    count = 1
    for d in shape:
        count *= d
    return itemsize, has_object, count


def _literal(text: str) -> object:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
        raise _BadHeader(f"not a Python literal ({type(exc).__name__})") from None


def _drop_long_suffixes(text: str) -> str:
    """numpy's ``_filter_header``: a NAME token ``L`` right after a NUMBER is removed."""
    tokens = []
    after_number = False
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if not (after_number and token.type == tokenize.NAME and token.string == "L"):
                tokens.append(token)
            after_number = token.type == tokenize.NUMBER
        return str(tokenize.untokenize(tokens))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise _BadHeader(f"not a Python literal ({type(exc).__name__})") from None


def _descr_size(descr: object, depth: int) -> tuple[int, bool]:
    """(itemsize, contains objects) of a numpy array-protocol type description."""
    if depth > 32:
        raise _BadHeader("dtype description is nested too deeply")
    if isinstance(descr, str):
        m = _TYPESTR.match(descr)
        if not m:
            raise _BadHeader(f"unknown dtype {descr!r}")
        kind, digits = m.groups()
        if kind == "O":
            return 8, True
        if digits:
            size = int(digits)
            return (size * 4 if kind == "U" else size), False
        if kind in _FIXED:
            return _FIXED[kind], False
        raise _BadHeader(f"dtype {descr!r} has no size")
    if isinstance(descr, list):
        total, has_object = 0, False
        for field in descr:
            if not isinstance(field, tuple) or len(field) not in (2, 3):
                raise _BadHeader(f"structured dtype field {field!r} is malformed")
            size, obj = _descr_size(field[1], depth + 1)
            if len(field) == 3:
                sub = field[2]
                sub = (sub,) if isinstance(sub, int) else sub
                if not isinstance(sub, tuple) or not all(isinstance(d, int) and d >= 0
                                                         for d in sub):
                    raise _BadHeader(f"structured dtype field {field!r} has a bad shape")
                for d in sub:
                    size *= d
            total += size
            has_object = has_object or obj
        return total, has_object
    raise _BadHeader(f"dtype description {descr!r} is neither a string nor a list")
