"""Symbolic execution of a pickle stream: what would loading it import, call and mutate?

The machine follows CPython's unpickler (``Modules/_pickle.c``) opcode by
opcode: the same stack and mark discipline, the same memo rules, the same
protocol-2 import renames, the same error conditions. It never imports or calls
anything; values are symbolic (``Global``, ``Call``, containers, small
constants). Large string and bytes arguments are skipped, not read, so scanning
cost tracks the number of opcodes, not the size of embedded data.

Where the real loader would stop with an error, the machine stops too and
reports where: everything before that point would already have run.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
import functools
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safehub._scanner.source import ByteSource, Truncated

__all__ = [
    "FRAMES_BYTES",
    "FRAMES_FILE",
    "Blob",
    "Call",
    "Global",
    "Limits",
    "OpBudget",
    "PickleCursor",
    "PickleError",
    "StreamResult",
    "SymDict",
    "SymList",
    "SymSet",
    "render",
    "run_stream",
]

_HIGHEST_PROTOCOL = 5
# How the unpickler meets a FRAME (see ``PickleCursor``): "file" is _pickle.c reading a file
# object (torch.load's io.BytesIO of data.pkl, pickle.load), "bytes" is pickle.loads.
FRAMES_FILE = "file"
# What a text-argument opcode (INT, FLOAT, STRING, GET, GLOBAL, ...) costs beyond one opcode
# of the budget: its line is found and parsed (and where the readers may part, checked
# against pickle._Unpickler's rules), several times the work of a binary opcode.
TEXT_OP_COST = 4
# What starting a stream costs, in opcodes of the file's budget: a zip of a million tiny
# pickle records spends it as surely as one record of millions of opcodes.
STREAM_COST = 64
FRAMES_BYTES = "bytes"
_TORCH_MODULE_RENAMES = {"torch.tensor": "torch._tensor"}
JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
_ARRAY_HEAD = 1 << 16


class OpBudget:
    """What one file's analysis may still spend, shared by all its streams and readings:
    opcodes (``left``) and bytes of decompression work (``inflate_left``: compressed bytes
    consumed plus bytes produced). Zip records can all point at one deflate stream, so
    without the second bound a small archive repeats the same inflation without end."""

    __slots__ = ("inflate_left", "left")

    def __init__(self, left: int, inflate_left: int = 1 << 62):
        self.left = left
        self.inflate_left = inflate_left


@dataclass(frozen=True)
class Limits:
    """Bounds that keep analysis time and memory finite on any input.

    ``max_ops`` bounds the opcodes analyzed per file (all its pickle streams together).
    Real checkpoints need far fewer: data.pkl of Llama-7B is 5k opcodes, Mixtral-8x7B
    17k, a 61-layer 256-expert MoE (47k tensors) 0.85M, the same with its Adam state
    (141k tensors) 3.3M. Five million is 1.5 times the largest, and analyzed in a few
    seconds: a deflate bomb of opcodes ends in SH191 instead of minutes of work.
    """

    max_ops: int = 5_000_000
    max_values: int = 20_000_000  # container items and memo entries tracked
    max_line: int = 1 << 20  # text-opcode argument length
    max_inline: int = 1 << 16  # longer str/bytes arguments are skipped, not kept
    max_depth: int = 8  # nested streams (joblib object arrays)
    # Bytes of decompression work per file (zip records, all readings together): twice
    # the largest record the scanner reads (ScanOptions.max_record_size), and at worst
    # some twenty seconds of inflation (empty deflate blocks, the slowest input).
    max_inflate: int = 8 << 30
    # The file's shared budget (FileScan gives each file its own); None: max_ops per stream
    budget: OpBudget | None = field(default=None, compare=False)


class PickleError(Exception):
    """Where and why the real unpickler would stop (internal)."""

    def __init__(self, message: str, offset: int, *, truncated: bool = False):
        super().__init__(message)
        self.offset = offset
        self.truncated = truncated


class AnalysisLimit(Exception):
    """An analysis bound was hit (internal)."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


# --- symbolic values ------------------------------------------------------------------------


class Global:
    """A name the loader would import: ``find_class(module, name)``."""

    __slots__ = ("effective", "module", "offset", "opcode", "raw")

    def __init__(self, raw: str, effective: str, offset: int, opcode: str, module: str):
        self.raw = raw  # as written in the stream
        self.module = module  # the module line as written (what __import__ is first asked)
        self.effective = effective  # after the loader's renames
        self.offset = offset
        self.opcode = opcode

    def __repr__(self) -> str:
        return f"Global({self.effective!r})"


class ComputedGlobal:
    """STACK_GLOBAL whose operands are not constants: the name is decided at load time."""

    __slots__ = ("module", "name", "offset")

    def __init__(self, module: object, name: object, offset: int):
        self.module = module
        self.name = name
        self.offset = offset


class Call:
    """The result of calling ``func`` (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ)."""

    __slots__ = ("args", "builds", "func", "kwargs", "offset", "opcode", "state", "writes")

    def __init__(self, func: object, args: object, kwargs: object, offset: int, opcode: str):
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.offset = offset
        self.opcode = opcode
        self.state: object = None  # last BUILD state applied to the result
        self.builds = 0  # how many BUILDs were applied to the result
        # The first SETITEM(S), APPEND(S) or ADDITEMS applied to the result: on a loaded
        # tensor its __setitem__ writes into the storage (which other tensors share).
        self.writes = ""


class Blob:
    """A str/bytes/int argument too large to keep; only its size is known."""

    __slots__ = ("kind", "length")

    def __init__(self, kind: str, length: int):
        self.kind = kind
        self.length = length


class PersistentRef:
    """The result of ``persistent_load(pid)``."""

    __slots__ = ("offset", "pid")

    def __init__(self, pid: object, offset: int):
        self.pid = pid
        self.offset = offset


class Opaque:
    """A value whose content does not matter to the analysis."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what


class SymList:
    __slots__ = ("items",)

    def __init__(self, items: list[object] | None = None):
        self.items: list[object] = items if items is not None else []


class SymDict:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[object, object]] = []

    def get(self, key: str) -> object:
        for k, v in reversed(self.items):
            if k == key:
                return v
        return None

    def keys(self) -> list[object]:
        return [k for k, _ in self.items]


class SymSet:
    __slots__ = ("frozen", "items")

    def __init__(self, items: list[object] | None = None, frozen: bool = False):
        self.items: list[object] = items if items is not None else []
        self.frozen = frozen


@dataclass
class Mutation:
    """An opcode that changes an existing object (BUILD, SETITEM(S), APPEND(S), ADDITEMS)."""

    opcode: str
    target: object
    offset: int


@dataclass(frozen=True)
class MachineState:
    """A copy of the unpickler's state (stack, marks, memo, protocol) at some opcode."""

    stack: list[object]
    metastack: list[list[object]]
    memo: dict[int, object]
    proto: int


@dataclass(frozen=True)
class InlineArray:
    """Raw array bytes joblib reads right after its wrapper's BUILD.

    ``offset`` is where plain ``pickle.load`` would read its next opcode instead (the
    alignment padding, then the data), ``head`` the first bytes from there, ``state``
    the unpickler's state at that point: plain loading would go on from it.
    """

    offset: int
    nbytes: int
    head: bytes
    state: MachineState


@dataclass
class StreamResult:
    """Everything one pickle stream would do, as far as static analysis can tell."""

    start: int
    end: int = 0  # offset after STOP, or where analysis stopped
    stopped: bool = False  # reached STOP cleanly
    value: object = None  # what load() would return
    protocol: int = 0
    ops: int = 0
    globals: list[Global] = field(default_factory=list)
    computed: list[ComputedGlobal] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    mutations: list[Mutation] = field(default_factory=list)
    persistent: list[PersistentRef] = field(default_factory=list)
    extensions: list[tuple[int, int]] = field(default_factory=list)  # (code, offset)
    out_of_band: list[int] = field(default_factory=list)
    inline_arrays: list[InlineArray] = field(default_factory=list)
    # Where a read crossed the end of a FRAME (or STOP came before it): real picklers never
    # write that, and loaders then read different bytes (see PickleCursor).
    frame_splits: list[int] = field(default_factory=list)
    error: str = ""
    error_offset: int | None = None
    truncated: bool = False
    limit: str = ""


# --- the machine ----------------------------------------------------------------------------

_MARK_ERROR = "could not find MARK"


class PickleCursor:
    """Reads a source as a sequence of pickle streams and raw regions.

    Formats that interleave pickles with raw data (torch legacy, joblib) use one
    cursor: ``stream()`` analyzes the next pickle, ``take``/``skip`` handle the
    raw bytes between them, ``at_eof()`` tells whether anything is left.

    Frames are read as ``_pickle.c`` reads them. From a file object without ``peek``
    (``frames="file"``: torch.load's ``io.BytesIO`` of data.pkl, ``pickle.load``) the
    FRAME opcode reads its whole frame into the unpickler's buffer; a read that does
    not fit in what is left of the buffer *drops* those bytes and reads on from the
    file after the frame, and a FRAME inside a frame that does not fit does the same.
    After STOP the file is positioned at the end of the buffer. From bytes
    (``frames="bytes"``, ``pickle.loads``) a FRAME only checks that its bytes exist.
    The data of the bytes opcodes is the exception: ``_Unpickler_ReadInto`` joins it.
    Picklers never split an opcode across a frame's end, so every such split is
    recorded (``frame_splits``) and the stream is analyzed a second time under the
    other reading when the source can be re-read (loaders with ``peek`` mix both).
    """

    def __init__(
        self,
        src: ByteSource,
        *,
        base: int = 0,
        limits: Limits | None = None,
        torch_names: bool = False,
        joblib: bool = False,
        frames: str = FRAMES_FILE,
        python_reading: bool = False,
    ):
        self.src = src
        self.frames = frames
        # Source position (like buf_pos) where the unpickler's frame buffer ends; -1 when
        # no frame is being read.
        self.frame_stop = -1
        self.splits: list[int] = []
        # pickle._Unpickler's reading (joblib.load) instead of _pickle.c's
        self.py = False
        # Where _pickle.c's and pickle._Unpickler's readings part (C reading only)
        self.divergent: list[int] = []
        self.base = base  # absolute offset of the source's start, for reporting
        self.limits = limits or Limits()
        self.torch_names = torch_names
        self.joblib = joblib
        # Re-read divergent streams as pickle._Unpickler (joblib.load) does: always for
        # joblib files, and for readings of any file from its byte 0 (joblib.load reads a
        # tar or zip-less container as a pickle too).
        self.python_reading = joblib or python_reading
        self.buf = b""
        self.i = 0
        self.buf_pos = src.tell()  # source position of buf[0]
        self.values = 0
        self.depth = 0
        # End of the last FRAME read, for joblib's pure-Python unpickler, which buffers a
        # whole frame: raw array bytes are read from the file *after* it.
        self.frame_end = -1
        self.alternate = False  # this cursor is the second reading of a split stream

    # -- frames ------------------------------------------------------------------------------

    def _frame_read(self, n: int) -> None:
        """Before reading ``n`` bytes inside a frame: drop its rest if they do not fit."""
        pos = self.buf_pos + self.i
        stop = self.frame_stop
        if pos + n <= stop:
            return
        self.frame_stop = -1
        if pos >= stop:
            return  # the frame was used up exactly: the unpickler reads on from the file
        if self.py:
            raise PickleError("pickle exhausted before end of frame", self.offset())
        self.splits.append(self.base + pos)
        if self.frames == FRAMES_FILE:
            self._skip_raw(stop - pos)

    def _frame_line(self) -> None:
        """Before a text argument inside a frame: its newline must be inside the frame."""
        if self.py:
            return  # _py_line reads frames itself
        pos = self.buf_pos + self.i
        stop = self.frame_stop
        if pos >= stop:
            self.frame_stop = -1
            return
        nl = self._find_nl()
        if self.buf_pos + nl < stop:
            return
        self.frame_stop = -1
        self.splits.append(self.base + pos)
        if self.frames == FRAMES_FILE:
            self._skip_raw(stop - pos)

    def _frame(self, length: int, at: int) -> None:
        """The FRAME opcode, after its 8-byte length."""
        pos = self.buf_pos + self.i
        stop = self.frame_stop
        if self.py:
            if stop > pos:
                raise PickleError("beginning of a new frame before end of current frame", at)
            # pickle._Unpickler reads what there is of the frame, without complaint
            rem = self.remaining()
            self.frame_stop = pos + (length if rem is None else min(length, rem))
            self.frame_end = self.base + self.frame_stop
            return
        if stop > pos:
            if pos + length <= stop:
                return  # served from the current buffer, then rewound: nothing changes
            # The new frame does not fit in the buffer: its rest is dropped (file) and the
            # frame is read from after it.
            self.splits.append(self.base + pos)
            if self.frames == FRAMES_FILE:
                self._skip_raw(stop - pos)
                pos = stop
        rem = self.src.remaining()
        if rem is not None and length > (len(self.buf) - self.i) + rem:
            self.divergent.append(at)  # pickle._Unpickler reads the short frame
            raise PickleError("pickle data was truncated (frame)", at, truncated=True)
        self.frame_stop = pos + length
        self.frame_end = self.base + pos + length

    def _end_frame(self) -> None:
        """After STOP: a file-reading unpickler leaves the file at the end of its buffer."""
        pos = self.buf_pos + self.i
        stop = self.frame_stop
        self.frame_stop = -1
        if stop > pos:
            if not self.py:
                self.splits.append(self.base + pos)
            if self.frames == FRAMES_FILE or self.py:
                self._skip_raw(stop - pos)

    # -- text arguments ------------------------------------------------------------------------

    def _text_arg(self, parse_c: Callable[[bytes, int], Any], parse_py: Callable[[bytes], Any],
                  at: int, *, full_line: bool = False) -> Any:
        """A text opcode's argument as this reading parses it.

        The C reading also decides whether pickle._Unpickler would read it otherwise
        (accepted or not, or the value); then the stream is marked divergent and analyzed
        again as pickle._Unpickler reads it (see ``stream``).
        """
        if self.frame_stop < 0 and not self.py:
            # The common case, inline: outside a frame, the newline already buffered.
            i = self.i
            nl = self.buf.find(b"\n", i)
            if nl >= 0:
                text = self.buf[i:nl]
                self.i = nl + 1
                return self._parsed_c(text, parse_c, parse_py, at, full_line)
        if self.py:
            text, has_nl = self._py_line()
            if not has_nl and not full_line:
                text = text[:-1]  # readline()[:-1] at the end of the file
            elif has_nl and full_line:
                text += b"\n"
            try:
                return parse_py(text)
            except (ValueError, OverflowError):
                raise PickleError("invalid text argument", at) from None
        try:
            text = self.line()
        except Truncated:
            self.divergent.append(at)  # pickle._Unpickler reads a last line without newline
            raise
        return self._parsed_c(text, parse_c, parse_py, at, full_line)

    def _parsed_c(self, text: bytes, parse_c: Callable[[bytes, int], Any],
                  parse_py: Callable[[bytes], Any], at: int, full_line: bool) -> Any:
        """A text argument's value as _pickle.c parses it; divergence noted."""
        try:
            value = parse_c(text, at)
        except PickleError:
            try:
                parse_py(text + b"\n" if full_line else text)
            except (ValueError, OverflowError):
                pass
            else:
                self.divergent.append(at)
            raise
        # Parsed once: for what _pickle.c accepted, whether pickle._Unpickler reads the same
        # value follows from the text alone (``_PY_AGREES``); only INT's rarer spellings
        # are parsed the second way to find out.
        agrees = _PY_AGREES[parse_py](text)
        if agrees is not None:
            if not agrees:
                self.divergent.append(at)
            return value
        try:
            same = parse_py(text + b"\n" if full_line else text) == value
        except (ValueError, OverflowError):
            same = False
        if not same and value == value:  # NaN compares unequal to itself
            self.divergent.append(at)
        return value

    def _py_line(self) -> tuple[bytes, bool]:
        """pickle._Unpickler's readline: (line without newline, whether it had one)."""
        stop = self.frame_stop
        if stop >= 0:
            pos = self.buf_pos + self.i
            if pos >= stop:
                self.frame_stop = -1
            else:
                nl = self._find_nl()
                if self.buf_pos + nl >= stop:
                    raise PickleError("pickle exhausted before end of frame", self.offset())
                data = self.buf[self.i : nl]
                self.i = nl + 1
                return data, True
        try:
            nl = self._find_nl()
        except Truncated:
            rest = self.buf[self.i :]
            self.i = len(self.buf)
            return rest, False
        data = self.buf[self.i : nl]
        self.i = nl + 1
        return data, True

    # -- reading -----------------------------------------------------------------------------

    def offset(self) -> int:
        """Absolute offset of the next unread byte."""
        return self.base + self.buf_pos + self.i

    def _fill(self, n: int) -> None:
        have = len(self.buf) - self.i
        if have >= n:
            return
        chunks = [self.buf[self.i :]]
        self.buf_pos += self.i
        self.i = 0
        want = max(n - have, 1 << 16)
        while have < n:
            chunk = self.src.read(want)
            if not chunk:
                self.buf = b"".join(chunks)
                raise Truncated()
            chunks.append(chunk)
            have += len(chunk)
            want = n - have
        self.buf = b"".join(chunks)

    def take(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or ``Truncated``."""
        if self.frame_stop >= 0:
            self._frame_read(n)
        if len(self.buf) - self.i < n:
            self._fill(n)
        j = self.i + n
        data = self.buf[self.i : j]
        self.i = j
        return data

    def skip(self, n: int) -> None:
        """Advance ``n`` bytes without keeping them (seeks when the source can)."""
        if self.frame_stop >= 0:
            self._frame_read(n)
        self._skip_raw(n)

    def _skip_raw(self, n: int) -> None:
        have = len(self.buf) - self.i
        if n <= have:
            self.i += n
            return
        rest = n - have
        self.buf_pos += len(self.buf)
        self.buf = b""
        self.i = 0
        skipped = self.src.skip(rest)
        self.buf_pos += skipped
        if skipped < rest:
            raise Truncated()

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes, left unread (fewer at the end of the source)."""
        with contextlib.suppress(Truncated):
            self._fill(n)
        return self.buf[self.i : self.i + n]

    def at_eof(self) -> bool:
        if self.i < len(self.buf):
            return False
        try:
            self._fill(1)
        except Truncated:
            return True
        return False

    def remaining(self) -> int | None:
        rem = self.src.remaining()
        return None if rem is None else rem + len(self.buf) - self.i

    def line(self) -> bytes:
        """Bytes up to (excluding) the next newline; a missing newline is truncation."""
        if self.frame_stop >= 0:
            self._frame_line()
        nl = self._find_nl()
        data = self.buf[self.i : nl]
        self.i = nl + 1
        return data

    def _find_nl(self) -> int:
        """Index in ``buf`` of the next newline, reading on as needed."""
        start = self.i
        while True:
            nl = self.buf.find(b"\n", start)
            if nl >= 0:
                return nl
            pending = len(self.buf) - self.i
            if pending > self.limits.max_line:
                raise AnalysisLimit("text opcode argument is longer than the limit", self.offset())
            self._fill(pending + 1)
            start = self.i + pending  # _fill moved the pending bytes to buf[i:]

    def _frame_join(self, n: int) -> None:
        """Before the data of BINBYTES, SHORT_BINBYTES, BINBYTES8 and BYTEARRAY8 in a frame.

        _pickle.c reads these with ``_Unpickler_ReadInto``, which takes what is left of
        the frame and the rest from the file: joined, as from bytes (pickle._Unpickler
        stops instead).
        """
        pos = self.buf_pos + self.i
        stop = self.frame_stop
        if pos + n <= stop:
            return
        self.frame_stop = -1
        if pos < stop and self.py:
            raise PickleError("pickle exhausted before end of frame", self.offset())

    def sized(self, n: int, kind: str, *, joined: bool = False) -> object:
        """A length-prefixed argument: kept when small, skipped when large."""
        if self.frame_stop >= 0:
            if joined:
                self._frame_join(n)
            else:
                self._frame_read(n)
        if n <= self.limits.max_inline:
            return self.take(n)
        rem = self.remaining()
        if rem is not None and n > rem:
            raise Truncated()
        self.skip(n)
        return Blob(kind, n)

    # -- streams -----------------------------------------------------------------------------

    def stream(self, state: MachineState | None = None) -> StreamResult:
        """Analyze one pickle stream from the current position up to its STOP.

        With ``state``, analysis resumes an unpickler already in that state (a copy is
        used), as ``pickle.load`` would continue after bytes joblib treats as data.
        """
        res = StreamResult(start=self.offset())
        start_pos = self.buf_pos + self.i
        self.splits = []
        self.divergent = []
        self.frame_stop = -1
        try:
            res.value = self._loop(res, state)
            res.stopped = True
        except Truncated:
            res.error = "pickle data was truncated"
            res.truncated = True
            res.error_offset = self.offset()
        except PickleError as exc:
            res.error = str(exc)
            res.error_offset = exc.offset
            res.truncated = exc.truncated
        except AnalysisLimit as exc:
            res.limit = str(exc)
            res.error_offset = exc.offset
        self.frame_stop = -1
        res.end = self.offset()
        res.frame_splits = self.splits
        self.splits = []
        if not self.alternate:
            if res.frame_splits:
                other = FRAMES_BYTES if self.frames == FRAMES_FILE else FRAMES_FILE
                self._other_reading(res, start_pos, state, other, py=False)
            if self.divergent and self.python_reading:
                self._other_reading(res, start_pos, state, self.frames, py=True)
        return res

    def _other_reading(self, res: StreamResult, start_pos: int, state: MachineState | None,
                       frames: str, *, py: bool) -> None:
        """Analyze a stream again as another reader reads it; its findings join ``res``.

        Streams with split frames are read the other way too (file or bytes); streams
        whose text arguments pickle._Unpickler parses otherwise are read as it reads them
        when joblib would load the file.
        """
        src = self.src.reopen()
        if src is None:
            return  # a forward-only source; the split itself is reported
        other = PickleCursor(src, base=self.base, limits=self.limits,
                             torch_names=self.torch_names, joblib=self.joblib or py,
                             frames=frames)
        other.py = py
        other.alternate = True
        other.depth = self.depth
        try:
            other.skip(start_pos)
        except Truncated:
            return
        alt = other.stream(state)
        self.values += other.values
        res.ops += alt.ops
        for name in ("globals", "computed", "calls", "persistent", "inline_arrays"):
            mine: list[object] = getattr(res, name)
            # A GLOBAL at the same offset can name another global in the other reading
            # (its line joined across a split frame): the name is part of the key.
            seen = {(getattr(x, "offset", None), type(x), getattr(x, "raw", None))
                    for x in mine}
            mine.extend(x for x in getattr(alt, name)
                        if (getattr(x, "offset", None), type(x), getattr(x, "raw", None))
                        not in seen)
        seen_m = {(m.offset, m.opcode) for m in res.mutations}
        res.mutations.extend(m for m in alt.mutations if (m.offset, m.opcode) not in seen_m)
        res.extensions.extend(e for e in alt.extensions if e not in res.extensions)
        res.out_of_band.extend(o for o in alt.out_of_band if o not in res.out_of_band)
        if alt.limit and not res.limit:
            res.limit = alt.limit

    def _count(self, n: int = 1) -> None:
        self.values += n
        if self.values > self.limits.max_values:
            raise AnalysisLimit("too many values to track", self.offset())

    def _loop(self, res: StreamResult, state: MachineState | None = None) -> object:
        # One branch per opcode, like _pickle.c.
        stack: list[object] = list(state.stack) if state else []
        metastack: list[list[object]] = [list(m) for m in state.metastack] if state else []
        memo: dict[int, object] = dict(state.memo) if state else {}
        proto = state.proto if state else 0
        budget = self.limits.budget
        if budget is not None:
            budget.left -= STREAM_COST
        max_ops = self.limits.max_ops if budget is None else budget.left
        if max_ops <= 0:
            raise AnalysisLimit("the file's opcode budget is spent", self.offset())
        unpack = struct.unpack
        max_values = self.limits.max_values

        def pop(at: int) -> object:
            if not stack:
                raise PickleError("unpickling stack underflow", at)
            return stack.pop()

        def pop_mark(at: int) -> list[object]:
            nonlocal stack
            if not metastack:
                raise PickleError(_MARK_ERROR, at)
            items = stack
            stack = metastack.pop()
            return items

        def top(at: int) -> object:
            if not stack:
                raise PickleError("unpickling stack underflow", at)
            return stack[-1]

        ops = 0
        try:
            while True:
                i = self.i
                buf = self.buf
                if i >= len(buf):
                    self._fill(1)
                    i = self.i
                    buf = self.buf
                at = self.base + self.buf_pos + i
                ops += 1
                if ops > max_ops:
                    raise AnalysisLimit(f"more than {self.limits.max_ops} opcodes", at)
                op = buf[i]
                i += 1
                self.i = i

                # The dispatch: the twelve opcodes most frequent in real checkpoints first, then
                # the rest in four groups by value, each in order of frequency, so that a flood
                # of the rarest opcode walks 30 comparisons, not 70.
                # A 1-byte argument never crosses a frame's end (the opcode byte is inside),
                # and a 4-byte one is read inline when it is inside the buffer and frame.
                if op == 0x72:  # r LONG_BINPUT
                    if i + 4 <= len(buf) and (self.frame_stop < 0
                                              or self.buf_pos + i + 4 <= self.frame_stop):
                        idx = int.from_bytes(buf[i : i + 4], "little")
                        self.i = i + 4
                    else:
                        idx = unpack("<I", self.take(4))[0]
                    if not stack:
                        raise PickleError("unpickling stack underflow", at)
                    if idx not in memo:  # self._count(), inline
                        self.values += 1
                        if self.values > max_values:
                            raise AnalysisLimit("too many values to track", self.offset())
                    memo[idx] = stack[-1]
                elif op == 0x68:  # h BINGET
                    if i < len(buf):
                        idx = buf[i]
                        self.i = i + 1
                    else:
                        idx = self.take(1)[0]
                    if idx not in memo:
                        raise PickleError(f"Memo value not found at index {idx}", at)
                    stack.append(memo[idx])
                elif op == 0x4B:  # K BININT1
                    if i < len(buf):
                        stack.append(buf[i])
                        self.i = i + 1
                    else:
                        stack.append(self.take(1)[0])
                elif op == 0x71:  # q BINPUT
                    if i < len(buf):
                        idx = buf[i]
                        self.i = i + 1
                    else:
                        idx = self.take(1)[0]
                    if not stack:
                        raise PickleError("unpickling stack underflow", at)
                    if idx not in memo:  # self._count(), inline
                        self.values += 1
                        if self.values > max_values:
                            raise AnalysisLimit("too many values to track", self.offset())
                    memo[idx] = stack[-1]
                elif op == 0x58:  # X BINUNICODE
                    if i + 4 <= len(buf) and (self.frame_stop < 0
                                              or self.buf_pos + i + 4 <= self.frame_stop):
                        n = int.from_bytes(buf[i : i + 4], "little")
                        self.i = i + 4
                    else:
                        n = unpack("<I", self.take(4))[0]
                    data = self.sized(n, "str")
                    stack.append(_utf8(data, at) if isinstance(data, bytes) else data)
                elif op == 0x28:  # ( MARK
                    metastack.append(stack)
                    stack = []
                elif op == 0x74:  # t TUPLE
                    items = pop_mark(at)
                    self._count(len(items))
                    stack.append(tuple(items))
                elif op == 0x85:  # TUPLE1
                    if not stack:
                        raise PickleError("unpickling stack underflow", at)
                    stack[-1] = (stack[-1],)
                elif op == 0x52:  # R REDUCE
                    if len(stack) < 2:
                        raise PickleError("unpickling stack underflow", at)
                    args = stack.pop()
                    call = Call(stack[-1], args, None, at, "REDUCE")
                    res.calls.append(call)
                    stack[-1] = call
                elif op == 0x89:  # NEWFALSE
                    stack.append(False)
                elif op == 0x51:  # Q BINPERSID
                    ref = PersistentRef(pop(at), at)
                    res.persistent.append(ref)
                    stack.append(ref)
                elif op == 0x29:  # ) EMPTY_TUPLE
                    stack.append(())
                elif op < 0x4F:
                    if op == 0x47:  # G BINFLOAT
                        stack.append(unpack(">d", self.take(8))[0])
                    elif op == 0x4E:  # N NONE
                        stack.append(None)
                    elif op == 0x4D:  # M BININT2
                        if i + 2 <= len(buf) and (self.frame_stop < 0
                                                  or self.buf_pos + i + 2 <= self.frame_stop):
                            stack.append(buf[i] | buf[i + 1] << 8)
                            self.i = i + 2
                        else:
                            stack.append(unpack("<H", self.take(2))[0])
                    elif op == 0x4A:  # J BININT
                        if i + 4 <= len(buf) and (self.frame_stop < 0
                                                  or self.buf_pos + i + 4 <= self.frame_stop):
                            stack.append(int.from_bytes(buf[i : i + 4], "little", signed=True))
                            self.i = i + 4
                        else:
                            stack.append(unpack("<i", self.take(4))[0])
                    elif op == 0x2E:  # . STOP
                        value = pop(at)
                        if self.frame_stop >= 0:
                            self._end_frame()
                        return value
                    elif op == 0x49:  # I INT
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        stack.append(self._text_arg(_load_int, _py_int, at, full_line=True))
                    elif op == 0x4C:  # L LONG
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        stack.append(self._text_arg(_load_long, _py_long, at))
                    elif op == 0x46:  # F FLOAT
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        stack.append(self._text_arg(_load_float, _py_float, at))
                    elif op == 0x43:  # C SHORT_BINBYTES
                        stack.append(self.sized(self.take(1)[0], "bytes", joined=True))
                    elif op == 0x42:  # B BINBYTES
                        stack.append(self.sized(unpack("<I", self.take(4))[0], "bytes",
                                                joined=True))
                    elif op == 0x30:  # 0 POP
                        if stack:
                            stack.pop()
                        elif metastack:
                            stack = metastack.pop()
                        else:
                            raise PickleError("unpickling stack underflow", at)
                    elif op == 0x31:  # 1 POP_MARK
                        pop_mark(at)
                    elif op == 0x32:  # 2 DUP
                        stack.append(top(at))
                    else:
                        raise PickleError(f"invalid load key, {bytes([op])!r}", at)
                elif op < 0x67:
                    if op == 0x5D:  # ] EMPTY_LIST
                        stack.append(SymList())
                    elif op == 0x65:  # e APPENDS
                        items = pop_mark(at)
                        target = top(at)
                        self._mutate(res, "APPENDS", target, at)
                        if isinstance(target, SymList):
                            self._count(len(items))
                            target.items.extend(items)
                    elif op == 0x63:  # c GLOBAL
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        module = self._text_arg(_ascii_line, _py_utf8_line, at)
                        name = self._text_arg(_ascii_line, _py_utf8_line, at)
                        stack.append(self._global(res, module, name, proto, at, "GLOBAL"))
                    elif op == 0x61:  # a APPEND
                        value = pop(at)
                        target = top(at)
                        self._mutate(res, "APPEND", target, at)
                        if isinstance(target, SymList):
                            self._count()
                            target.items.append(value)
                    elif op == 0x56:  # V UNICODE
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        stack.append(self._text_arg(_load_unicode, _py_unicode, at))
                    elif op == 0x55:  # U SHORT_BINSTRING
                        stack.append(_py2str(self.take(self.take(1)[0])))
                    elif op == 0x54:  # T BINSTRING
                        n = unpack("<i", self.take(4))[0]
                        if n < 0:
                            raise PickleError("BINSTRING pickle has negative byte count", at)
                        data = self.sized(n, "str")
                        stack.append(_py2str(data) if isinstance(data, bytes) else data)
                    elif op == 0x53:  # S STRING
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        stack.append(self._text_arg(_parse_string, _py_parse_string, at))
                    elif op == 0x64:  # d DICT
                        items = pop_mark(at)
                        if len(items) % 2:
                            raise PickleError("odd number of items for DICT", at)
                        d = SymDict()
                        d.items = list(zip(items[::2], items[1::2], strict=True))
                        self._count(len(items))
                        stack.append(d)
                    elif op == 0x62:  # b BUILD
                        build_state = pop(at)
                        inst = top(at)
                        self._mutate(res, "BUILD", inst, at)
                        if isinstance(inst, Call):
                            inst.builds += 1
                            wrapper = _is_joblib_wrapper(inst)
                            # NumpyArrayWrapper has no __setstate__: load_build updates the
                            # instance's __dict__, so attributes of earlier BUILDs remain.
                            inst.state = (_merge_dict_state(inst.state, build_state) if wrapper
                                          else build_state)
                            if self.joblib and wrapper:
                                here = MachineState(list(stack), [list(m) for m in metastack],
                                                    dict(memo), proto)
                                stack[-1] = self._joblib_array(res, inst, at, here)
                    elif op == 0x50:  # P PERSID
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        pid = self._text_arg(_load_persid, _py_ascii_line, at)
                        ref = PersistentRef(pid, at)
                        res.persistent.append(ref)
                        stack.append(ref)
                    else:
                        raise PickleError(f"invalid load key, {bytes([op])!r}", at)
                elif op < 0x89:
                    if op == 0x7D:  # } EMPTY_DICT
                        stack.append(SymDict())
                    elif op == 0x75:  # u SETITEMS
                        items = pop_mark(at)
                        target = top(at)
                        if len(items) % 2:
                            raise PickleError("odd number of items for SETITEMS", at)
                        self._mutate(res, "SETITEMS", target, at)
                        if isinstance(target, SymDict):
                            self._count(len(items))
                            target.items.extend(zip(items[::2], items[1::2], strict=True))
                    elif op == 0x88:  # NEWTRUE
                        stack.append(True)
                    elif op == 0x86:  # TUPLE2
                        b = pop(at)
                        a = pop(at)
                        stack.append((a, b))
                    elif op == 0x87:  # TUPLE3
                        c = pop(at)
                        b = pop(at)
                        a = pop(at)
                        stack.append((a, b, c))
                    elif op == 0x6A:  # j LONG_BINGET
                        if i + 4 <= len(buf) and (self.frame_stop < 0
                                                  or self.buf_pos + i + 4 <= self.frame_stop):
                            idx = int.from_bytes(buf[i : i + 4], "little")
                            self.i = i + 4
                        else:
                            idx = unpack("<I", self.take(4))[0]
                        stack.append(_memo_get(memo, idx, at))
                    elif op == 0x73:  # s SETITEM
                        value = pop(at)
                        key = pop(at)
                        target = top(at)
                        self._mutate(res, "SETITEM", target, at)
                        if isinstance(target, SymDict):
                            self._count()
                            target.items.append((key, value))
                    elif op == 0x6C:  # l LIST
                        items = pop_mark(at)
                        self._count(len(items))
                        stack.append(SymList(items))
                    elif op == 0x70:  # p PUT
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        idx = self._text_arg(_memo_index, _py_memo_index, at)
                        if idx < 0:
                            raise PickleError("negative PUT argument", at)
                        self._memo_put(memo, idx, top(at))
                    elif op == 0x67:  # g GET
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        idx = self._text_arg(_memo_index, _py_memo_index, at)
                        stack.append(_memo_get(memo, idx, at))
                    elif op in (0x82, 0x83, 0x84):  # EXT1 EXT2 EXT4
                        width = {0x82: 1, 0x83: 2, 0x84: 4}[op]
                        code = int.from_bytes(self.take(width), "little", signed=(width == 4))
                        if code <= 0:
                            raise PickleError("EXT specifies code <= 0", at)
                        res.extensions.append((code, at))
                        stack.append(Opaque(f"extension {code}"))
                    elif op == 0x81:  # NEWOBJ
                        args = pop(at)
                        cls = pop(at)
                        if not isinstance(args, tuple) and not self.py:
                            # pickle._Unpickler takes any iterable
                            self.divergent.append(at)
                            raise PickleError("NEWOBJ expected an arg tuple", at)
                        stack.append(self._call(res, cls, args, None, at, "NEWOBJ"))
                    elif op == 0x69:  # i INST
                        ops += TEXT_OP_COST  # a text argument costs several binary opcodes
                        if not metastack and not self.py:
                            # pickle._Unpickler reads the lines and imports before it looks for MARK
                            self.divergent.append(at)
                        module = self._text_arg(_ascii_line, _py_ascii_line, at)
                        name = self._text_arg(_ascii_line, _py_ascii_line, at)
                        if self.py:
                            cls_g = self._global(res, module, name, proto, at, "INST")
                            args_l = pop_mark(at)
                        else:
                            args_l = pop_mark(at)
                            cls_g = self._global(res, module, name, proto, at, "INST")
                        stack.append(self._call(res, cls_g, tuple(args_l), None, at, "INST"))
                    elif op == 0x6F:  # o OBJ
                        items = pop_mark(at)
                        if not items:
                            raise PickleError("unpickling stack underflow", at)
                        stack.append(self._call(res, items[0], tuple(items[1:]), None, at, "OBJ"))
                    elif op == 0x80:  # PROTO
                        proto = self.take(1)[0]
                        if proto > _HIGHEST_PROTOCOL:
                            raise PickleError(f"unsupported pickle protocol: {proto}", at)
                        res.protocol = max(res.protocol, proto)
                    else:
                        raise PickleError(f"invalid load key, {bytes([op])!r}", at)
                else:
                    if op == 0x94:  # MEMOIZE
                        self._memo_put(memo, len(memo), top(at))
                    elif op == 0x8C:  # SHORT_BINUNICODE
                        stack.append(_utf8(self.take(self.take(1)[0]), at))
                    elif op == 0x93:  # STACK_GLOBAL
                        name_v = pop(at)
                        module_v = pop(at)
                        if isinstance(module_v, str) and isinstance(name_v, str):
                            stack.append(self._global(res, module_v, name_v, proto, at,
                                                      "STACK_GLOBAL"))
                        elif (isinstance(module_v, (bytes, int, float, type(None), tuple))
                              or isinstance(name_v, (bytes, int, float, type(None), tuple))):
                            raise PickleError("STACK_GLOBAL requires str", at)
                        else:
                            computed = ComputedGlobal(module_v, name_v, at)
                            res.computed.append(computed)
                            stack.append(computed)
                    elif op == 0x95:  # FRAME
                        self._frame(unpack("<Q", self.take(8))[0], at)
                    elif op == 0x8A:  # LONG1
                        n = self.take(1)[0]
                        stack.append(int.from_bytes(self.take(n), "little", signed=True))
                    elif op == 0x8B:  # LONG4
                        n = unpack("<i", self.take(4))[0]
                        if n < 0:
                            raise PickleError("LONG pickle has negative byte count", at)
                        data = self.sized(n, "int")
                        stack.append(int.from_bytes(data, "little", signed=True)
                                     if isinstance(data, bytes) else data)
                    elif op == 0x8D:  # BINUNICODE8
                        data = self.sized(unpack("<Q", self.take(8))[0], "str")
                        stack.append(_utf8(data, at) if isinstance(data, bytes) else data)
                    elif op == 0x8E:  # BINBYTES8
                        stack.append(self.sized(unpack("<Q", self.take(8))[0], "bytes",
                                                joined=True))
                    elif op == 0x96:  # BYTEARRAY8
                        stack.append(self.sized(unpack("<Q", self.take(8))[0], "bytearray",
                                                joined=True))
                    elif op == 0x8F:  # EMPTY_SET
                        stack.append(SymSet())
                    elif op == 0x91:  # FROZENSET
                        items = pop_mark(at)
                        self._count(len(items))
                        stack.append(SymSet(items, frozen=True))
                    elif op == 0x90:  # ADDITEMS
                        items = pop_mark(at)
                        target = top(at)
                        self._mutate(res, "ADDITEMS", target, at)
                        if isinstance(target, SymSet):
                            self._count(len(items))
                            target.items.extend(items)
                    elif op == 0x92:  # NEWOBJ_EX
                        kwargs = pop(at)
                        args = pop(at)
                        cls = pop(at)
                        if not isinstance(args, tuple) and not self.py:
                            self.divergent.append(at)
                            raise PickleError("NEWOBJ_EX args argument must be a tuple", at)
                        stack.append(self._call(res, cls, args, kwargs, at, "NEWOBJ_EX"))
                    elif op == 0x97:  # NEXT_BUFFER
                        res.out_of_band.append(at)
                        stack.append(Opaque("out-of-band buffer"))
                    elif op == 0x98:  # READONLY_BUFFER
                        top(at)
                        res.out_of_band.append(at)
                    else:
                        raise PickleError(f"invalid load key, {bytes([op])!r}", at)
        finally:
            res.ops += ops
            if budget is not None:
                budget.left -= ops

    # -- semantics helpers --------------------------------------------------------------------

    def _memo_put(self, memo: dict[int, object], idx: int, value: object) -> None:
        if idx not in memo:
            self._count()
        memo[idx] = value

    def _global(
        self, res: StreamResult, module: str, name: str, proto: int, at: int, opcode: str
    ) -> Global:
        raw = f"{module}.{name}"
        written = module
        if proto < 3:
            mapped = _compat_pickle.NAME_MAPPING.get((module, name))
            if mapped is not None:
                module, name = mapped
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if self.torch_names:
            module = _TORCH_MODULE_RENAMES.get(module, module)
        g = Global(raw, f"{module}.{name}", at, opcode, written)
        res.globals.append(g)
        return g

    def _call(
        self, res: StreamResult, func: object, args: object, kwargs: object, at: int, opcode: str
    ) -> Call:
        call = Call(func, args, kwargs, at, opcode)
        res.calls.append(call)
        return call

    def _mutate(self, res: StreamResult, opcode: str, target: object, at: int) -> None:
        if isinstance(target, Call):
            if opcode != "BUILD" and not target.writes:
                target.writes = opcode
        elif isinstance(target, (Global, ComputedGlobal, PersistentRef, Opaque)):
            res.mutations.append(Mutation(opcode, target, at))

    def _joblib_array(self, res: StreamResult, wrapper: Call, at: int,
                      state: MachineState) -> object:
        """Skip (or analyze) the array bytes joblib writes right after its wrapper record."""
        extent = _joblib_extent(wrapper.state)
        if extent is None:
            raise PickleError("joblib array record with an undeterminable size", at)
        nbytes, has_object, aligned = extent
        start = self.offset()
        if start < self.frame_end:
            # joblib reads the array after the buffered frame and then resumes unpickling
            # with the rest of the frame: the bytes would be read in another order than
            # they are stored. joblib's own pickler ends a frame before each array.
            raise PickleError("a pickle frame continues past a joblib array record", at)
        if has_object:
            # joblib unpickles a nested stream here with a plain pickle Unpickler (own stack
            # and memo, no array records of its own); its imports and calls are recorded
            # with this stream's.
            if self.depth >= self.limits.max_depth:
                raise AnalysisLimit("joblib object arrays nested too deeply", at)
            self.depth += 1
            self.joblib = False
            try:
                self._loop(res)
            finally:
                self.depth -= 1
                self.joblib = True
            return Opaque("joblib object array")
        prefix = b""
        if aligned:
            pad = self.take(1)
            prefix = pad + self.take(pad[0])
        # Keep the first bytes: plain pickle.load would parse them, padding included, as
        # opcodes from the state at this point (see fmt_pickle).
        head = self.take(min(nbytes, _ARRAY_HEAD))
        self.skip(nbytes - len(head))
        res.inline_arrays.append(InlineArray(start, len(prefix) + nbytes, prefix + head, state))
        return Opaque("joblib array")


# --- helpers -------------------------------------------------------------------------------


def _is_global(value: object, name: str) -> bool:
    return isinstance(value, Global) and value.effective == name


def _merge_dict_state(old: object, state: object) -> object:
    """The attributes after ``load_build`` on an object without ``__setstate__``:
    ``inst.__dict__.update(state)``, then ``setattr`` for each item of a slot state.

    A snapshot is taken (later changes to the state dict do not reach the instance), and
    a state the default BUILD could not apply is returned as is (an undeterminable size).
    """
    merged = SymDict()
    if isinstance(old, SymDict):
        merged.items = list(old.items)
    elif old is not None:
        return Opaque("instance attributes")
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
    for part in parts:
        if isinstance(part, SymDict):
            merged.items.extend(part.items)
        elif part is None or (isinstance(part, (bool, int, float, str, bytes, tuple))
                              and not part):
            continue  # falsy: load_build skips it
        else:
            return Opaque("instance attributes")
    return merged


def _is_joblib_wrapper(inst: Call) -> bool:
    """Whether joblib would take this object for an array record.

    joblib tests ``isinstance(obj, NumpyArrayWrapper)`` after every BUILD, so an instance
    made by a factory (``copyreg._reconstructor(NumpyArrayWrapper, ...)``) counts too.
    """
    if _is_global(inst.func, JOBLIB_WRAPPER):
        return True
    args = inst.args
    return (isinstance(inst.func, Global) and isinstance(args, tuple) and bool(args)
            and _is_global(args[0], JOBLIB_WRAPPER))


# Integers decide what the loader does next (joblib array sizes, memo slots), so the text
# opcodes are parsed exactly as _pickle.c does, quirks included: INT tries C strtol with
# base 0 (octal "010" is 8) and falls back to PyLong_FromString; GET and PUT use base 10.
_C_SPACE = b" \t\n\v\f\r"
_LONG_MAX = (1 << 63) - 1
_HEX = b"0123456789abcdefABCDEF"
_INF = float("inf")


def _pylong(text: bytes, base: int, at: int) -> int:
    """PyLong_FromString: Python's int() syntax, reading up to the first NUL byte."""
    try:
        return int(text.split(b"\0", 1)[0], base)
    except ValueError:
        raise PickleError("invalid literal for int", at) from None


def _strtol(text: bytes) -> tuple[int, int] | None:
    """C ``strtol(text, &end, 0)`` on LP64: (value, end index), or None on overflow."""
    i, n = 0, len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    negative = i < n and text[i] == 0x2D
    if i < n and text[i] in b"+-":
        i += 1
    base = 10
    if text[i : i + 2] in (b"0x", b"0X") and i + 2 < n and text[i + 2] in _HEX:
        base, i = 16, i + 2
    elif text[i : i + 1] == b"0":
        base = 8
    digits = _HEX if base == 16 else _HEX[:base]
    start = i
    while i < n and text[i] in digits:
        i += 1
    if i == start:
        return 0, 0  # no conversion: end points at the start of the text
    value = int(text[start:i], base)
    if value > _LONG_MAX + negative:
        return None
    return (-value if negative else value), i


def _plain_int(text: bytes) -> bool:
    """Whether ``text`` is a decimal integer without sign, leading zeros or other syntax
    (an optional '-' before a nonzero digit) of at most 18 digits: C strtol, Python's
    int(text, 0) and int(text) all read it as int(text), and it fits in a C long."""
    digits = text[1:] if text[:1] == b"-" else text
    return (digits.isdigit() and len(digits) <= 18
            and (digits[0] != 0x30 or (digits is text and len(text) == 1)))


def _load_int(text: bytes, at: int) -> int | bool:
    """The INT opcode (``load_int``): "00"/"01" and any 2-character 0 or 1 are bools."""
    if _plain_int(text):
        return int(text)  # no 2-character 0 or 1 is plain: "00", "01" and "-0" are not
    if not text:
        raise PickleError("pickle data was truncated", at, truncated=True)
    parsed = _strtol(text)
    if parsed is not None and (parsed[1] == len(text) or text[parsed[1]] == 0):
        value = parsed[0]
        if len(text) == 2 and value in (0, 1):
            return bool(value)
        return value
    return _pylong(text, 0, at)


# FLOAT is read by PyOS_string_to_double (no spaces, no underscores, no hex), which stops at
# the first NUL or the newline; an overflow to infinity is an error.
_C_FLOAT = re.compile(
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))")
_C_INF = re.compile(rb"[+-]?(?i:inf|infinity)")


def _load_float(text: bytes, at: int) -> float:
    """The FLOAT opcode (``load_float``)."""
    if not text:
        raise PickleError("pickle data was truncated", at, truncated=True)
    number = text.split(b"\0", 1)[0]
    if _C_FLOAT.fullmatch(number) is None:
        raise PickleError("could not convert string to float", at)
    value = float(number)
    if value in (_INF, -_INF) and _C_INF.fullmatch(number) is None:
        raise PickleError("value too large to convert to float", at)
    return value


def _load_long(text: bytes, at: int) -> int:
    """The LONG opcode (``load_long``): an optional trailing L, then PyLong_FromString."""
    if not text:
        raise PickleError("pickle data was truncated", at, truncated=True)
    if text.endswith(b"L"):
        text = text[:-1]
    return _pylong(text, 0, at)


# pickle._Unpickler's parsers (joblib.load): Python's int() and float() on the line.
def _py_int(line: bytes) -> int | bool:
    if line == b"00\n":
        return False
    if line == b"01\n":
        return True
    return int(line, 0)


def _py_long(text: bytes) -> int:
    if text.endswith(b"L"):
        text = text[:-1]
    return int(text, 0)


def _py_float(text: bytes) -> float:
    return float(text)


def _py_memo_index(text: bytes) -> int:
    return int(text)


def _py_utf8_line(text: bytes) -> str:
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("invalid UTF-8") from None


def _py_ascii_line(text: bytes) -> str:
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not ASCII") from None


def _load_unicode(text: bytes, at: int) -> str:
    try:
        return text.decode("raw-unicode-escape")
    except UnicodeDecodeError:
        raise PickleError("invalid UNICODE argument", at) from None


def _py_unicode(text: bytes) -> str:
    return text.decode("raw-unicode-escape")


def _load_persid(text: bytes, at: int) -> str:
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise PickleError("persistent IDs in protocol 0 must be ASCII strings", at) from None


def _py_parse_string(text: bytes) -> str:
    try:
        return _parse_string(text, 0)
    except PickleError as exc:
        raise ValueError(str(exc)) from None


def _memo_index(text: bytes, at: int) -> int:
    """The argument of GET and PUT: a base-10 integer."""
    if not text:
        raise PickleError("pickle data was truncated", at, truncated=True)
    return _pylong(text, 10, at)


def _utf8(data: bytes, at: int) -> str:
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise PickleError("invalid UTF-8 in string argument", at) from None


def _py2str(data: bytes) -> str:
    # Python 2 str: pickle.load decodes it with its `encoding` (ASCII by default, utf-8 in
    # torch). Latin-1 keeps every byte, so names compare exactly and non-ASCII never matches
    # an allowlisted name.
    return data.decode("latin-1")


# Escape sequences escape_decode accepts without a warning, matched left to right as it
# reads them (so an escaped backslash is consumed whole); a bad \x raises ValueError.
_VALID_ESCAPES = re.compile(rb"\\[\\'\"abfnrtv\n0-3x]")  # \4xx and up may warn


_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.?)", re.DOTALL)
_TRAILING_BACKSLASHES = re.compile(rb"(?<!\\)(?:\\\\)*\\\Z")
_ESCAPE_CHARS = frozenset(b"\\'\"abfnrtv\n01234567x")


def _quiet_escape(match: re.Match[bytes]) -> bytes:
    char = match.group(1)
    if char and 0x30 <= char[0] <= 0x37 and int(char, 8) > 0o377:
        return b"\\x%02x" % (int(char, 8) & 0xFF)  # escape_decode keeps the low byte
    return match.group(0) if char and char[0] in _ESCAPE_CHARS else b"\\" + match.group(0)


def _parse_string(text: bytes, at: int) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[:1] in (b"'", b'"'):
        if b"\\" not in text:
            return _py2str(text[1:-1])  # escape_decode changes only backslash sequences
        try:
            return _unescape(text[1:-1])
        except ValueError:
            raise PickleError("invalid escape in STRING argument", at) from None
    raise PickleError("the STRING opcode argument must be quoted", at)


# A pure function of the bytes: floods repeat one escaped string millions of times, and
# the escape handling below costs microseconds per call (errors are not cached).
@functools.lru_cache(maxsize=4096)
def _unescape(body: bytes) -> str:
    """A quoted STRING body as ``codecs.escape_decode`` reads it; ValueError if it refuses."""
    if b"\\" not in _VALID_ESCAPES.sub(b"", body):
        raw = codecs.escape_decode(body)[0]  # no invalid escape: nothing to warn
    elif len(body) <= 256 and not _TRAILING_BACKSLASHES.search(body):
        # An invalid escape decodes to itself: escaping its backslash gives the
        # same bytes without the warning machinery, which costs more per opcode.
        raw = codecs.escape_decode(_ESCAPE.sub(_quiet_escape, body))[0]
    else:
        with warnings.catch_warnings():  # "invalid escape sequence" is data
            warnings.simplefilter("ignore", DeprecationWarning)
            raw = codecs.escape_decode(body)[0]
    return _py2str(raw)


def _ascii_line(text: bytes, at: int) -> str:
    """A GLOBAL/INST line: non-empty UTF-8 (``load_global`` reads NUL bytes as they are)."""
    if not text:
        raise PickleError("pickle data was truncated", at, truncated=True)
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise PickleError("invalid UTF-8 in GLOBAL argument", at) from None


# For a text argument _pickle.c accepted: does pickle._Unpickler read the same value (keyed
# by its parser)? True or False from the text alone, None where only parsing it tells.
# FLOAT, LONG, GET and PUT: the C reading stops at a NUL, Python's int() and float() refuse
# one; otherwise both run the same conversion on the same bytes (float's syntax is checked
# by _C_FLOAT, so PyOS_string_to_double sees what float() would). GLOBAL: the same UTF-8
# decoding (an empty line is refused by C, so never reaches here). INST and PERSID: ASCII
# in the Python reader. UNICODE and STRING: the same code in both.
def _agree_always(text: bytes) -> bool | None:
    return True


def _agree_no_nul(text: bytes) -> bool | None:
    return b"\0" not in text


def _agree_ascii(text: bytes) -> bool | None:
    return text.isascii()


def _agree_int(text: bytes) -> bool | None:
    return True if _plain_int(text) else None


_PY_AGREES: dict[Callable[[bytes], Any], Callable[[bytes], bool | None]] = {
    _py_int: _agree_int,
    _py_long: _agree_no_nul,
    _py_float: _agree_no_nul,
    _py_memo_index: _agree_no_nul,
    _py_utf8_line: _agree_always,
    _py_ascii_line: _agree_ascii,
    _py_unicode: _agree_always,
    _py_parse_string: _agree_always,
}


def _memo_get(memo: dict[int, object], idx: int, at: int) -> object:
    try:
        return memo[idx]
    except KeyError:
        raise PickleError(f"Memo value not found at index {idx}", at) from None


_NUMPY_ITEMSIZE = {"b": 1, "B": 1, "?": 1, "h": 2, "H": 2, "i": 4, "I": 4, "l": 8, "L": 8,
                   "q": 8, "Q": 8, "e": 2, "f": 4, "d": 8, "g": 16, "F": 8, "D": 16, "G": 32}


def _joblib_extent(state: object) -> tuple[int, bool, bool] | None:
    """(nbytes, has_object, aligned) of a joblib NumpyArrayWrapper, or None if unknowable."""
    if not isinstance(state, SymDict):
        return None
    shape = state.get("shape")
    dtype = state.get("dtype")
    aligned = state.get("numpy_array_alignment_bytes") is not None
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    count = 1
    for d in shape:
        count *= int(d)
    info = dtype_info(dtype)
    if info is None:
        return None
    itemsize, has_object = info
    return count * itemsize, has_object, aligned


def dtype_info(dtype: object) -> tuple[int, bool] | None:
    """(itemsize, has_object) of a pickled ``numpy.dtype(descr, align, copy)`` call.

    As numpy's ``dtype.__setstate__``: the flags of the state decide ``hasobject`` for
    every dtype, its element size only for flexible kinds (str, unicode, void). States of
    other shapes than numpy writes are not guessed at.
    """
    if not (isinstance(dtype, Call) and _is_global(dtype.func, "numpy.dtype")):
        return None
    args = dtype.args
    if not isinstance(args, tuple) or not args or not isinstance(args[0], str):
        return None
    descr = args[0]
    state = dtype.state
    elsize = -1
    flags = 0
    if state is not None:
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and isinstance(state[5], int) and isinstance(state[7], int)):
            return None
        elsize, flags = int(state[5]), int(state[7])
    has_object = descr.lstrip("<>|=").startswith("O") or bool(flags & 0x01)
    if has_object:
        return 8, True
    flexible = descr.lstrip("<>|=")[:1] in ("S", "a", "U", "V")
    if flexible and elsize > 0:
        return elsize, False
    size = _typestr_itemsize(descr)
    return None if size is None else (size, False)


def _typestr_itemsize(descr: str) -> int | None:
    kind = descr.lstrip("<>|=")
    if not kind:
        return None
    code, digits = kind[0], kind[1:]
    if digits:
        if not digits.isdigit():
            return None
        size = int(digits)
        return size * 4 if code == "U" else size
    return _NUMPY_ITEMSIZE.get(code)


# --- public entry points --------------------------------------------------------------------


def run_stream(
    src: ByteSource,
    *,
    base: int = 0,
    limits: Limits | None = None,
    torch_names: bool = False,
    joblib: bool = False,
    frames: str = FRAMES_FILE,
    python: bool = False,
) -> StreamResult:
    """Analyze the one pickle stream at the start of ``src`` (``python``: as
    pickle._Unpickler reads it, otherwise as _pickle.c does)."""
    cursor = PickleCursor(src, base=base, limits=limits, torch_names=torch_names,
                          joblib=joblib, frames=frames)
    cursor.py = python
    return cursor.stream()


def render(value: object, depth: int = 0, budget: list[int] | None = None) -> str:
    """Python-like source for a symbolic value: ``posix.system('touch x')``."""
    if budget is None:
        budget = [400]
    budget[0] -= 1
    if budget[0] < 0 or depth > 6:
        return "..."

    def r(v: object) -> str:
        return render(v, depth + 1, budget)

    if isinstance(value, Global):
        return value.effective
    if isinstance(value, ComputedGlobal):
        return f"<import {r(value.module)}.{r(value.name)} computed at load time>"
    if isinstance(value, Call):
        args = value.args if isinstance(value.args, tuple) else (value.args,)
        parts = [r(a) for a in args]
        if isinstance(value.kwargs, SymDict):
            parts += [f"{k}={r(v)}" for k, v in value.kwargs.items]
        text = f"{r(value.func)}({', '.join(parts)})"
        if value.state is not None:
            text += f".__setstate__({r(value.state)})"
        return text
    if isinstance(value, SymList):
        return "[" + ", ".join(r(v) for v in value.items[:8]) + (", ..." if len(value.items) > 8
                                                                  else "") + "]"
    if isinstance(value, SymDict):
        items = ", ".join(f"{r(k)}: {r(v)}" for k, v in value.items[:8])
        return "{" + items + (", ..." if len(value.items) > 8 else "") + "}"
    if isinstance(value, SymSet):
        return ("frozenset" if value.frozen else "set") + "({" + ", ".join(
            r(v) for v in value.items[:8]) + "})"
    if isinstance(value, tuple):
        inner = ", ".join(r(v) for v in value[:8])
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, Blob):
        return f"<{value.kind} of {value.length} bytes>"
    if isinstance(value, PersistentRef):
        return f"persistent_load({r(value.pid)})"
    if isinstance(value, Opaque):
        return f"<{value.what}>"
    if isinstance(value, (str, bytes)):
        text = repr(value)
        return text if len(text) <= 120 else text[:117] + "..."
    return repr(value)
