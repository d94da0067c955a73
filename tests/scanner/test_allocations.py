"""Resource exhaustion through allowed constructors (SH177).

``builtins.bytes`` and ``bytearray``, torch's storage and tensor types and numpy's array
constructors are allowed (real checkpoints name them), and each takes a size: a pickle
calling ``bytes(2**40)`` runs no code but makes ``pickle.load`` allocate a terabyte. The
real unpickler is shown allocating exactly what the argument asks (at a size small enough
to run); the scanner reads the constant argument and reports sizes past its bound, and
reports sizes computed at load time, which it cannot bound.
"""

from __future__ import annotations

import io
import pickle
import struct

import pytest

from safehub._scanner.judge import MAX_ALLOCATION
from safehub.findings import Verdict
from safehub.scan import scan_file

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")


def _int(n: int) -> bytes:
    return b"\x8a\x08" + struct.pack("<q", n)  # LONG1, 8 bytes


def _call(module: str, name: str, args: bytes) -> bytes:
    return f"c{module}\n{name}\n".encode() + b"(" + args + b"tR"


def _pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


ATTACKS = {
    "bytes": lambda n: _call("__builtin__", "bytes", _int(n)),
    "bytearray": lambda n: _call("builtins", "bytearray", _int(n)),
    "storage": lambda n: _call("torch", "FloatStorage", _int(n)),
    "untyped": lambda n: _call("torch.storage", "UntypedStorage", _int(n)),
    "tensor": lambda n: _call("torch", "Tensor", _int(n) + _int(1)),
    "ndarray": lambda n: _call("numpy", "ndarray", b"(" + _int(n) + b"t"),
    "reconstruct": lambda n: _call("numpy.core.multiarray", "_reconstruct",
                                   b"cnumpy\nndarray\n(" + _int(n) + b"tC\x01b"),
}
SIZE_OF = {"bytes": 1, "bytearray": 1, "storage": 4, "untyped": 1, "tensor": 4,
           "ndarray": 8, "reconstruct": 1}


def _scan(data: bytes) -> tuple[Verdict, set[str]]:
    report = scan_file(io.BytesIO(data), "alloc.pkl")
    return report.verdict, {f.rule_id for f in report.findings if f.blocking}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_real_unpickler_allocates_what_the_argument_asks(name: str) -> None:
    """The attack is real: pickle.loads builds an object of exactly the requested size."""
    n = 100_003
    value = pickle.loads(_pickle(ATTACKS[name](n)))
    if isinstance(value, (bytes, bytearray)):
        size = len(value)
    elif isinstance(value, np.ndarray):
        size = value.nbytes
    elif isinstance(value, torch.Tensor):
        size = value.numel() * value.element_size()
    else:
        size = value.nbytes()
    assert size == n * SIZE_OF[name]
    # ... and a small request passes the scan (the bound is far above it).
    assert _scan(_pickle(ATTACKS[name](n))) == (Verdict.CLEAN, set())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_huge_requests_are_reported(name: str) -> None:
    verdict, found = _scan(_pickle(ATTACKS[name](1 << 40)))
    assert verdict is Verdict.UNSAFE and found == {"SH177"}
    verdict, found = _scan(_pickle(ATTACKS[name](MAX_ALLOCATION + 1)))
    assert "SH177" in found


def test_many_requests_add_up() -> None:
    each = MAX_ALLOCATION // 4
    body = b"".join(ATTACKS["bytes"](each) + b"0" for _ in range(5)) + b"N"
    assert "SH177" in _scan(_pickle(body))[1]
    body = b"".join(ATTACKS["bytes"](each) + b"0" for _ in range(3)) + b"N"
    assert _scan(_pickle(body)) == (Verdict.CLEAN, set())


def test_size_computed_at_load_time_is_reported() -> None:
    """bytes(int("...")): the size is only known when int() runs (int is a harmless class)."""
    data = _pickle(_call("__builtin__", "bytes",
                         _call("__builtin__", "int", b"X\x0d\x00\x00\x001000000000000")))
    assert len(pickle.loads(data.replace(b"1000000000000", b"0000000000123"))) == 123
    assert "SH177" in _scan(data)[1]


def test_real_checkpoints_ask_for_nothing() -> None:
    """torch.save of tensors, numpy arrays, bytes and bytearrays (protocol 2, the default)."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(4), "a": np.arange(1 << 16), "b": b"\x00" * 4096, "e": b"",
                "ba": bytearray(b"xy"), "big": torch.zeros(1 << 22)}, buf)
    assert _scan(buf.getvalue()) == (Verdict.CLEAN, set())
    for proto in range(6):
        data = pickle.dumps({"a": np.zeros((64, 64)), "b": b"x" * 100, "e": b"",
                             "ba": bytearray(100)}, protocol=proto)
        assert _scan(data) == (Verdict.CLEAN, set()), proto
