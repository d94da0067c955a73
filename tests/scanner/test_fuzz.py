"""Property-based tests of the parsers (hypothesis).

- Random bytes and mutations of valid pickles, zips, npy and safetensors files: ``scan``
  never raises, finishes quickly, and never calls something clean that a loader could not
  parse to the end.
- Pickles of random nested containers, dumped with every protocol: clean, and the machine's
  value is exactly what ``pickle.loads`` returns (this guards the machine's exactness).

Every test is derandomized (hypothesis draws the same inputs on every run) and has no
deadline: a failure reproduces, and a loaded machine cannot fail it. The differential
fuzzer against the real parsers is test_oracle (``make fuzz`` runs it longer).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import zipfile
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safehub._scanner.allowlist import DEFAULT_ALLOWED
from safehub._scanner.pickle_vm import run_stream
from safehub._scanner.source import BytesSource
from safehub.findings import FileReport, Verdict
from safehub.scan import scan_file
from tests.scanner.test_pickle_vm import to_python

FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def scan_bytes(data: bytes) -> FileReport:
    return scan_file(io.BytesIO(data), "fuzz")


class _Stub:
    """Stands in for every allowlisted global: the test checks parsing, not semantics."""

    def __new__(cls, *args: object, **kwargs: object) -> _Stub:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()

    def __setstate__(self, state: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass

    def add(self, item: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass


class _Checking(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        mapped = _compat_pickle.NAME_MAPPING.get((module, name), (
            _compat_pickle.IMPORT_MAPPING.get(module, module), name))
        for candidate in (f"{module}.{name}", ".".join(mapped)):
            if candidate in DEFAULT_ALLOWED:
                return _Stub
        raise AssertionError(f"scanner called a file clean that imports {module}.{name}")

    def persistent_load(self, pid: object) -> Any:
        raise AssertionError("scanner called a file clean that uses persistent ids")


# Unpickling errors about the values an opcode received (BUILD on a list, say), which a
# static analysis does not model: the stream itself parses.
_SEMANTIC = ("state is not a dictionary", "must be a dict", "argument must be a tuple")


def assert_sound(data: bytes, report: FileReport) -> None:
    """A clean plain pickle must load to the end, importing only allowlisted names."""
    assert report.verdict is not Verdict.ERROR
    if report.verdict is not Verdict.CLEAN or report.format != "pickle":
        return
    try:
        _Checking(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        if not any(m in str(exc) for m in _SEMANTIC):
            raise AssertionError(f"called clean, but pickle.loads fails: {exc!r}") from exc
    except (EOFError, KeyError, UnicodeDecodeError) as exc:
        raise AssertionError(f"called clean, but pickle.loads fails: {exc!r}") from exc
    except (ValueError, TypeError, AttributeError, OverflowError, MemoryError, IndexError):
        pass  # raised by an opcode's semantics on its (fuzzed) values, after parsing


@FAST
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    assert_sound(data, scan_bytes(data))


_SEEDS = [
    pickle.dumps({"a": [1, 2.5, None, True], "b": (b"xy", "z"), "c": {1, 2}}, protocol=p)
    for p in range(6)
] + [pickle.dumps([np.arange(3.0), np.float32(2)], protocol=p) for p in (2, 4, 5)]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            data[pos:pos] = other[start:start + draw(st.integers(1, 32))]
    return bytes(data)


@FAST
@given(mutated(_SEEDS))
def test_mutated_pickles(data: bytes) -> None:
    assert_sound(data, scan_bytes(data))


def _zip_seed() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": [1, 2]}, protocol=2))
        zf.writestr("archive/data/0", b"\0" * 16)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _npy_seed(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _safetensors_seed() -> bytes:
    header = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    return struct.pack("<Q", len(header)) + header + b"\0" * 8


_CONTAINERS = [_zip_seed(), _npy_seed(np.arange(4.0)), _npy_seed(np.array([1, "a"], dtype=object)),
               _safetensors_seed()]


@FAST
@given(mutated(_CONTAINERS))
def test_mutated_containers(data: bytes) -> None:
    report = scan_bytes(data)
    assert report.verdict is not Verdict.ERROR


_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=20) | st.binary(max_size=20))
_HASHABLE = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(_HASHABLE, inner, max_size=5)
                   | st.frozensets(_HASHABLE, max_size=4) | st.sets(_HASHABLE, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_VALUES, st.integers(0, 5))
def test_containers_are_clean_and_rebuilt_exactly(value: object, protocol: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    report = scan_bytes(data)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]
    res = run_stream(BytesSource(data))
    assert res.stopped and res.end == len(data)
    assert to_python(res.value) == pickle.loads(data)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_VALUES)
def test_shared_references_through_the_memo(value: object) -> None:
    shared = [value]
    data = pickle.dumps([shared, shared, (shared,)], protocol=4)
    res = run_stream(BytesSource(data))
    assert to_python(res.value) == pickle.loads(data)
