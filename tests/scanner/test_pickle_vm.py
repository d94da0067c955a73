"""The symbolic pickle machine follows CPython's _pickle.c exactly.

Where it computes a value (an int that sizes a joblib array, a memo slot, a string that
names an import) it must compute what the real unpickler computes; where the real one
fails, it must fail too (or report the stream as malformed). Each case is checked against
``pickle.loads`` itself, on inputs that import nothing.
"""

from __future__ import annotations

import _codecs
import collections
import pickle
from typing import Any

import pytest

from safehub._scanner.pickle_vm import (
    Blob,
    Call,
    ComputedGlobal,
    Global,
    Limits,
    SymDict,
    SymList,
    SymSet,
    render,
    run_stream,
)
from safehub._scanner.source import BytesSource

_CALLS = {"builtins.set": set, "builtins.bytes": bytes, "builtins.frozenset": frozenset,
          "builtins.bytearray": bytearray,
          "_codecs.encode": _codecs.encode, "builtins.complex": complex,
          "collections.OrderedDict": collections.OrderedDict}


def to_python(value: object) -> Any:
    """The value ``pickle.loads`` would return, rebuilt from the symbolic one."""
    if isinstance(value, SymList):
        return [to_python(v) for v in value.items]
    if isinstance(value, tuple):
        return tuple(to_python(v) for v in value)
    if isinstance(value, SymDict):
        return {to_python(k): to_python(v) for k, v in value.items}
    if isinstance(value, SymSet):
        items = [to_python(v) for v in value.items]
        return frozenset(items) if value.frozen else set(items)
    if isinstance(value, Call):
        assert isinstance(value.func, Global), render(value)
        func = _CALLS[value.func.effective]
        args = value.args if isinstance(value.args, tuple) else ()
        result = func(*[to_python(a) for a in args])
        if value.state is not None:
            raise AssertionError(f"unexpected BUILD on {render(value)}")
        return result
    assert not isinstance(value, (Blob, Global, ComputedGlobal)), render(value)
    return value


def vm(data: bytes, **limits: int) -> Any:
    res = run_stream(BytesSource(data), limits=Limits(**limits) if limits else None)
    return res


def outcome(data: bytes) -> tuple[str, object]:
    """('ok', value) or ('error', None), for the VM and for pickle.loads alike."""
    res = vm(data)
    mine: tuple[str, object] = ("ok", to_python(res.value)) if res.stopped else ("error", None)
    return mine


def real(data: bytes) -> tuple[str, object]:
    try:
        return ("ok", pickle.loads(data))
    except Exception:
        return ("error", None)


TEXT_OPCODE_CASES = [
    b"I\n.", b"I\x00x\n.", b"I5\x00x\n.", b"I 7\n.", b"I0x\n.", b"I-1\n.", b"I+1\n.",
    b"I 1\n.", b"I9223372036854775807\n.", b"I9223372036854775808\n.",
    b"I-9223372036854775808\n.", b"I-9223372036854775809\n.", b"I0X1f\n.", b"I0x1_0\n.",
    b"I010\n.", b"I08\n.", b"I00\n.", b"I01\n.", b"I001\n.", b"I1_0\n.", b"I-0\n.",
    b"I\t12 \n.", b"I12abc\n.", b"I0o7\n.", b"I0b1\n.", b"I1e3\n.",
    b"L\n.", b"L5\x00x\n.", b"LL\n.", b"L0x10L\n.", b"L010L\n.", b"L-5L\n.",
    b"L99999999999999999999L\n.",
    b"(lp\n.", b"(lp 5\n0g5 \n.", b"(lp-1\n.", b"(lp5\x00\n0g5\n.", b"(lp0x1\n0g0x1\n.",
    b"(lp010\n0g10\n.", b"(lp1_0\n0g10\n.",
    b"S'abc'\n.", b'S"abc"\n.', b"S'a\\x41\\n'\n.", b"S'abc\n.", b"Sabc\n.", b"S''\n.",
    b"S'\n.", b"Vab\\u0041c\n.", b"V\\x41\n.", b"F1.5\n.", b"F-inf\n.",
    b"(I1\nI2\nl.", b"(I1\nI2\nt.", b"(I1\nI2\nd.", b"(I1\nd.", b"(I1\n1N.", b"(0N.",
    b"N0.", b"(N0N.", b"0.", b"(2.", b"N2t.", b"N\x85\x85.",
    b"\x80\x02]q\x00(K\x01K\x02e.", b"\x80\x02}q\x00(K\x01K\x02K\x03u.",
    b"\x80\x04\x8f(K\x01K\x02\x90.", b"\x80\x04(K\x01\x91.", b"\x80\x04K\x01\x94h\x00\x86.",
    b"\x80\x04K\x01\x94\x94h\x01\x86.", b"\x80\x02K\x01q\x05j\x05\x00\x00\x00.",
    b"\x80\x02K\x01r\x00\x00\x01\x00j\x00\x00\x01\x00.", b"\x80\x06N.", b"\x80\x02\x8a\x00.",
    b"\x80\x02\x8a\x02\xff\x7f.", b"\x80\x02\x8b\x02\x00\x00\x00\x00\x80.",
    b"\x80\x02\x8b\xff\xff\xff\xff.", b"\x80\x05\x95\x02\x00\x00\x00\x00\x00\x00\x00N.",
    b"\x80\x05\x95\xff\x00\x00\x00\x00\x00\x00\x00N.", b"\x80\x02C\x03abc.", b"\x80\x02U\x02ab.",
    b"\x80\x02T\x02\x00\x00\x00ab.", b"\x80\x02T\xff\xff\xff\xffab.", b"\x80\x04\x8c\x02\xff\xfe.",
    b"\x80\x04X\x02\x00\x00\x00\xed\xa0.", b"", b".", b"\x80\x02", b"N", b"\xff.",
]


@pytest.mark.parametrize("data", TEXT_OPCODE_CASES, ids=repr)
def test_values_and_failures_match_cpython(data: bytes) -> None:
    assert outcome(data) == real(data)


def test_huge_memo_index_is_kept_sparse() -> None:
    # CPython sizes its memo array to the index (MemoryError at 2**32); the machine keeps a
    # dict, so it follows the stream further than the loader would.
    res = vm(b"\x80\x02K\x01r\xff\xff\xff\xffj\xff\xff\xff\xff.")
    assert res.stopped and res.value == 1


def test_memo_slots_through_every_put_and_get() -> None:
    data = (b"\x80\x04K\x0a\x94K\x0bq\x07K\x0cr\x00\x01\x00\x00K\x0dp9\n"
            b"0000h\x00h\x07j\x00\x01\x00\x00g9\n\x94h\x04(t\x87\x86.")
    assert outcome(data) == real(data)


def test_protocol_2_import_renames() -> None:
    res = vm(b"c__builtin__\nset\n(]tR.")
    assert res.globals[0].effective == "builtins.set"
    assert res.globals[0].raw == "__builtin__.set"
    res = vm(b"\x80\x03c__builtin__\nset\n(]tR.")  # protocol 3: no renames
    assert res.globals[0].effective == "__builtin__.set"


def test_proto_opcode_later_in_the_stream_changes_renames() -> None:
    # find_class uses the protocol in force when the GLOBAL runs.
    res = vm(b"c__builtin__\nset\n0\x80\x04c__builtin__\nset\n.")
    assert [g.effective for g in res.globals] == ["builtins.set", "__builtin__.set"]


def test_stack_global_with_non_str_operands_fails_like_cpython() -> None:
    for data in (b"\x80\x04C\x02osU\x06system\x93.", b"\x80\x04K\x01K\x02\x93.",
                 b"\x80\x04N\x8c\x01a\x93."):
        assert outcome(data) == real(data) == ("error", None)


def test_stack_global_operands_from_calls_are_computed() -> None:
    res = vm(b"\x80\x04\x8c\x07_codecs\x8c\x06encode\x93\x8c\x02bf\x8c\x05rot13\x86R"
             b"\x8c\x06system\x93.")
    assert len(res.computed) == 1
    assert "rot13" in render(res.computed[0].module)


def test_large_arguments_are_skipped_not_kept() -> None:
    big = b"\x80\x04\x8e" + (1 << 20).to_bytes(8, "little") + b"\0" * (1 << 20) + b"."
    res = vm(big, max_inline=1024)
    assert res.stopped and isinstance(res.value, Blob) and res.value.length == 1 << 20


def test_stop_position_is_exact() -> None:
    data = pickle.dumps({"a": [1, 2]}, protocol=5)
    res = vm(data + b"trailing")
    assert res.stopped and res.end == len(data)


def test_pop_of_an_empty_frame_pops_the_mark() -> None:
    # load_pop: an empty stack above a mark pops the mark itself.
    assert outcome(b"(0K\x01.") == real(b"(0K\x01.")
    assert outcome(b"K\x01(0.") == real(b"K\x01(0.")


def test_persistent_ids_are_recorded_not_resolved() -> None:
    res = vm(b"\x80\x02(U\x07storageq\x00tQ.")
    assert len(res.persistent) == 1
    res = vm(b"Pabc\n.")
    assert res.persistent[0].pid == "abc"


def test_error_offset_points_at_the_failing_opcode() -> None:
    res = vm(b"\x80\x02N\xff")
    assert not res.stopped and res.error_offset == 3 and "invalid load key" in res.error


def test_op_limit_stops_analysis() -> None:
    res = vm(b"N0" * 1000 + b"N.", max_ops=100)
    assert res.limit and not res.stopped


def test_string_escapes_match_escape_decode_without_warnings() -> None:
    """STRING's fast paths (no backslash, only valid escapes, invalid escapes rewritten)
    give exactly what both unpicklers' escape_decode gives, errors included, and never
    raise the "invalid escape" warning to the caller (checked with warnings as errors)."""
    import codecs
    import itertools
    import warnings

    from safehub._scanner.pickle_vm import PickleError, _parse_string

    alphabet = [b"\\", b"q", b"x", b"4", b"7", b"0", b"8", b"n", b"\n", b"'", b"a"]
    for length in range(1, 5):
        for combo in itertools.product(alphabet, repeat=length):
            body = b"".join(combo)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    want: str | None = codecs.escape_decode(body)[0].decode("latin-1")
                except ValueError:
                    want = None
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    got: str | None = _parse_string(b"'" + body + b"'", 0)
                except PickleError:
                    got = None
            assert got == want, body
