"""Text arguments are parsed once: the shortcuts equal parsing them both ways.

The C reading decides from the text alone whether pickle._Unpickler (joblib.load) would
read a text argument _pickle.c accepted the same way (``_PY_AGREES``), and INT takes a fast
path for plain decimals. Both are checked here against the long way, on the oracle's
syntax corners and on a fixed-seed sample of short texts over the characters that matter;
``test_oracle.py`` checks the readings themselves against the real unpicklers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from safehub._scanner import pickle_vm as vm
from tests.scanner.oracle import gen

_ALPHABET = b"0123456789-+_ .eExXoObBLl\0\t\n\x0b\r\xffaIinNf'\"\\"
# (C parser, Python parser, whether the Python reader keeps the newline, tokens)
_KINDS: list[tuple[Callable[[bytes, int], Any], Callable[[bytes], Any], bool, list[bytes]]] = [
    (vm._load_int, vm._py_int, True, gen.INTS),
    (vm._load_long, vm._py_long, False, gen.LONGS),
    (vm._load_float, vm._py_float, False, gen.FLOATS),
    (vm._memo_index, vm._py_memo_index, False, gen.MEMO),
    (vm._ascii_line, vm._py_utf8_line, False, [b"os", b"system", b"", b"\xc3\xa9", b"\xff"]),
    (vm._ascii_line, vm._py_ascii_line, False, [b"os", b"", b"\xc3\xa9", b"\xff", b"a\0"]),
    (vm._load_persid, vm._py_ascii_line, False, [b"x", b"\xff", b"", b"\xc3\xa9"]),
    (vm._load_unicode, vm._py_unicode, False, gen.UNICODES),
    (vm._parse_string, vm._py_parse_string, False, gen.STRINGS),
]


def _tokens(extra: list[bytes]) -> list[bytes]:
    rng = random.Random(1010)
    sample = [bytes(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 7)))
              for _ in range(4000)]
    corners = [t + v for t in extra for v in gen.LINE_VARIANTS]
    plain = [b"0", b"7", b"-7", b"10", b"-10", b"123456789012345678",
             b"-123456789012345678", b"1234567890123456789", b"9223372036854775807"]
    return [t for t in extra + corners + plain + sample if b"\n" not in t]


def _outcome(parse: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        value = parse(*args)
    except (vm.PickleError, ValueError, OverflowError):
        return "error", None
    return "ok", value


@pytest.mark.parametrize("kind", range(len(_KINDS)))
def test_agreement_shortcut_equals_parsing_both_ways(kind: int) -> None:
    parse_c, parse_py, full_line, extra = _KINDS[kind]
    wrong = []
    for text in _tokens(extra):
        c_status, c_value = _outcome(parse_c, text, 0)
        if c_status != "ok":
            continue  # failures still parse the Python way (rare: the stream ends there)
        py_status, py_value = _outcome(parse_py, text + b"\n" if full_line else text)
        same = py_status == "ok" and (py_value == c_value or c_value != c_value)
        shortcut = vm._PY_AGREES[parse_py](text)
        if shortcut is not None and shortcut != same:
            wrong.append((text, c_value, py_status, py_value, shortcut))
    assert not wrong, wrong[:10]


def _load_int_long_way(text: bytes) -> tuple[str, Any]:
    """load_int as it was before the fast path: strtol with base 0, then PyLong."""
    if not text:
        return "error", None
    parsed = vm._strtol(text)
    if parsed is not None and (parsed[1] == len(text) or text[parsed[1]] == 0):
        value = parsed[0]
        return "ok", (bool(value) if len(text) == 2 and value in (0, 1) else value)
    return _outcome(vm._pylong, text, 0, 0)


def test_int_fast_path_equals_strtol() -> None:
    wrong = []
    for text in _tokens(gen.INTS):
        got = _outcome(vm._load_int, text, 0)
        want = _load_int_long_way(text)
        if got != want or type(got[1]) is not type(want[1]):
            wrong.append((text, got, want))
    assert not wrong, wrong[:10]
    assert sum(vm._plain_int(t) for t in _tokens(gen.INTS)) > 100  # the fast path is taken
