"""numpy dtype states numpy takes unchecked (SH108).

``numpy.dtype`` and ``_reconstruct`` are allowlisted (every pickled numpy array needs them),
and ``numpy.dtype.__setstate__`` takes a dtype's flags and layout from the pickle without
checking them: an object dtype whose state clears its object flags makes the array that
follows take eight raw bytes of the file for an object pointer, and a field placed past the
item reads and writes memory outside the array. Both files scanned CLEAN under the default
policy; pickle.load and torch.load(weights_only=False) return the array, and touching it
dereferences the file's pointer (a crash here; with a known address, code execution).
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from safehub.findings import Verdict
from tests.scanner.conftest import rules, scan_one

np = pytest.importorskip("numpy")

_POINTER = b"\x41" * 8  # the object pointer the file hands numpy


def _dtype(ctor: str, state: tuple[object, ...]) -> object:
    """A dtype after ``__setstate__(state)``, as unpickling one makes it."""
    dtype = np.dtype.__new__(np.dtype, ctor)
    dtype.__setstate__(state)
    return dtype


def _object_without_flags() -> bytes:
    """numpy's own pickle of an int64 array, its dtype renamed ``O8``: the state numpy wrote
    for the int64 dtype (flags 0) then makes an object dtype without object flags, and the
    array's eight raw bytes become its element's pointer."""
    data = pickle.dumps({"w": np.frombuffer(_POINTER, dtype="<i8")}, protocol=2)
    assert data.count(b"i8") == 1
    return data.replace(b"i8", b"O8")


def _object_field_without_flags() -> bytes:
    """A structured dtype with one object field and flags 0."""
    dtype = _dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
    return pickle.dumps({"w": np.frombuffer(_POINTER, dtype=dtype)}, protocol=2)


def _field_past_the_item() -> bytes:
    """A float field 1 MiB past an 8-byte item."""
    dtype = _dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("<f8"), 1 << 20)}, 8, 1, 16))
    return pickle.dumps({"w": np.zeros(1, dtype=dtype)}, protocol=2)


def _load_and_touch(path: Path) -> subprocess.CompletedProcess[str]:
    code = ("import pickle, sys; w = pickle.load(open(sys.argv[1], 'rb'))['w']; "
            "print(w.dtype.hasobject, w.dtype.itemsize, repr(w.dtype.fields)); w[0]['a'] "
            "if w.dtype.names else w[0]; print('touched')")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("build", [_object_without_flags, _object_field_without_flags])
def test_object_dtype_without_object_flags_is_refused(build: object, tmp_path: Path) -> None:
    path = tmp_path / "w.pkl"
    path.write_bytes(build())  # type: ignore[operator]
    run = _load_and_touch(path)
    assert run.stdout.startswith("False"), run  # loaded: an object dtype without objects
    assert run.returncode == -signal.SIGSEGV, run  # the file's pointer was dereferenced
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


def test_field_past_the_item_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pkl"
    path.write_bytes(_field_past_the_item())
    run = _load_and_touch(path)
    assert "1048576" in run.stdout, run  # numpy took the field: reading it reads 1 MiB on
    assert run.returncode in (0, -signal.SIGSEGV), run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


def test_a_second_state_cannot_hide_the_first(tmp_path: Path) -> None:
    """An array built between two BUILDs of one dtype sees the first state; the dtype
    ends with the second. Any second BUILD on a dtype is refused."""
    good = pickle.dumps(np.dtype("O"), protocol=2)
    first = b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    assert good.count(b"b") >= 1 and good.endswith(b"b.")
    data = good[:-1] + first[:-1] + b"b."  # the dtype's own state, then flags 0
    assert pickle.loads(data).hasobject is False
    path = tmp_path / "twice.pkl"
    path.write_bytes(data)
    assert "SH108" in rules(scan_one(path))


@pytest.mark.parametrize("value", [
    np.arange(6, dtype="<f4").reshape(2, 3), np.array(["ab", "c"]), np.array([b"x"]),
    np.array([1, None, "s"], dtype=object), np.array(["2020-01-01"], dtype="M8[D]"),
    np.float64(1.5), np.dtype("V8"), np.array([True]),
    # Structured and subarray dtypes, as numpy pickles them: their layouts are checked.
    np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
    np.array([(1, None)], dtype=[("a", "<i4"), ("b", "O")]),
    np.zeros(1, dtype=[("n", [("x", "u1"), ("y", "S3")]), ("o", "O", (2,))]),
    np.dtype(("<f4", (3,))), np.dtype({"names": ["p"], "formats": ["<i2"], "offsets": [6],
                                      "itemsize": 8}),
])
def test_plain_numpy_pickles_stay_clean(value: object, tmp_path: Path) -> None:
    path = tmp_path / "v.pkl"
    path.write_bytes(pickle.dumps({"v": value}, protocol=2))
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, report.findings


def _swapped_object_dtype() -> bytes:
    """numpy's own pickle of an object array, its dtype's byte order '|' changed to '>':
    numpy keeps the order, and a copy or cast of the array byte-swaps its object pointers."""
    data = pickle.dumps({"w": np.array([1, "x"], dtype=object)}, protocol=2)
    assert data.count(b"X\x01\x00\x00\x00|") == 1
    return data.replace(b"X\x01\x00\x00\x00|", b"X\x01\x00\x00\x00>")


class _OldFormatSubarray:
    """A 5-item dtype state (endian, subarray, fields, elsize, alignment): numpy reads the
    subarray from index 1, and a 512 MiB subarray on an 8-byte item reads past the array."""

    def __reduce__(self) -> tuple[object, ...]:
        return (np.dtype, ("V8", False, True),
                ("|", (np.dtype("<f8"), (1 << 26,)), None, 8, 1))


def test_swapped_object_dtype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pkl"
    path.write_bytes(_swapped_object_dtype())
    code = ("import pickle, sys, numpy; w = pickle.load(open(sys.argv[1], 'rb'))['w']; "
            "print(w.dtype.str, w.tolist(), flush=True); numpy.asarray(w, dtype=object)")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith(">O [1, 'x']"), run  # loaded with its objects, order '>'
    assert run.returncode == -signal.SIGSEGV, run  # the cast swapped the pointers
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


def test_old_format_state_is_read_by_its_own_layout(tmp_path: Path) -> None:
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"d": _OldFormatSubarray()}, protocol=2))
    code = ("import pickle, sys, numpy; d = pickle.load(open(sys.argv[1], 'rb'))['d']; "
            "print(d.itemsize, d.subdtype, flush=True); "
            "numpy.frombuffer(bytes(8), dtype=d).tolist()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("8 (dtype('float64'), (67108864,))"), run  # numpy took it
    assert run.returncode in (0, -signal.SIGSEGV), run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


@pytest.mark.parametrize("value", [np.array([1.5], dtype=">f8"), np.array(["ab"], dtype=">U2"),
                                   np.array([1], dtype=">M8[s]")])
def test_swapped_numbers_stay_clean(value: object, tmp_path: Path) -> None:
    path = tmp_path / "v.pkl"
    path.write_bytes(pickle.dumps({"v": value}, protocol=2))
    assert scan_one(path).verdict is Verdict.CLEAN


class _OverlappingObjectField:
    """An array whose dtype puts an int64 field over its object field (numpy's constructor
    refuses that layout, its __setstate__ takes it): ndarray.__setstate__ writes the item's
    fields in order, so the int64 lands on the pointer."""

    def __reduce__(self) -> tuple[object, ...]:
        from numpy._core.multiarray import _reconstruct
        dtype = _dtype("V8", (3, "|", None, ("o", "i"),
                              {"o": (np.dtype("O"), 0), "i": (np.dtype("<i8"), 0)}, 8, 1, 63))
        return (_reconstruct, (np.ndarray, (0,), b"b"),
                (1, (1,), dtype, False, [(None, int.from_bytes(_POINTER, "little"))]))


def test_field_over_an_object_field_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="overlapping object fields"):
        np.dtype({"names": ["o", "i"], "formats": ["O", "<i8"], "offsets": [0, 0]})
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"w": _OverlappingObjectField()}, protocol=2))
    run = _load_and_touch(path)
    assert run.stdout.startswith("True 8"), run  # loaded: an object field under an int64
    assert run.returncode == -signal.SIGSEGV, run  # w[0]['o'] read the file's pointer
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


_TITLED = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f8"], "titles": ["Alpha", None]})


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_titled_fields_as_numpy_writes_them_are_clean(how: str, tmp_path: Path) -> None:
    """numpy's pickle of a titled field keys the one (dtype, offset, title) tuple under the
    name and under the title: that second key was taken for a field numpy never made
    (SH108), so joblib.dump of such an array, which joblib.load limited to numpy's array
    globals loads, was UNSAFE."""
    value = np.zeros(2, dtype=_TITLED)
    path = tmp_path / f"t.{how}"
    if how == "joblib":
        joblib = pytest.importorskip("joblib")
        joblib.dump({"v": value}, path)
    else:
        path.write_bytes(pickle.dumps({"v": value}, protocol=2))
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]


_I4 = np.dtype("<i4")


@pytest.mark.parametrize("fields", [
    # The title's entry is not the field's: another offset (1 TiB past the item), another
    # (wider, object) dtype, a title that is also a name, a key no name or title explains.
    {"a": (_I4, 0, "T"), "T": (_I4, 1 << 40, "T")},
    {"a": (_I4, 0, "T"), "T": (np.dtype("<f8"), 0, "T")},
    {"a": (np.dtype("<i8"), 0, "T"), "T": (np.dtype("O"), 0, "T")},
    {"a": (_I4, 0, "b"), "b": (_I4, 4)},
    {"a": (_I4, 0), "x": (_I4, 4)},
], ids=["far", "wider", "object", "title-is-a-name", "extra-key"])
def test_title_entries_that_are_not_the_fields_own_are_refused(fields: dict[str, object],
                                                               tmp_path: Path) -> None:
    names = ("a", "b") if "b" in fields else ("a",)
    item = 8
    flags = 27 if any(v[0] == np.dtype("O") for v in fields.values()) else 16  # type: ignore[index]
    dtype = _dtype("V8", (3, "|", None, names, fields, item, 1, flags))
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"w": np.zeros(1, dtype=dtype)}, protocol=2))
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report), report.findings


def test_far_title_entry_reads_outside_the_array(tmp_path: Path) -> None:
    """What the refusal prevents: numpy takes the title's offset as given."""
    dtype = _dtype("V8", (3, "|", None, ("a",), {"a": (_I4, 0, "T"), "T": (_I4, 1 << 40, "T")},
                          8, 1, 16))
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"w": np.zeros(1, dtype=dtype)}, protocol=2))
    code = "import pickle, sys; w = pickle.load(open(sys.argv[1], 'rb'))['w']; w[0]['T']"
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == -signal.SIGSEGV, run
    assert "SH108" in rules(scan_one(path))


def test_titled_object_fields_stay_refused(tmp_path: Path) -> None:
    """numpy tells a title's entry from a field by identity; a titled object field is kept
    refused rather than trusting that identity (taken for a field, its pointers would be
    counted twice)."""
    dtype = np.dtype({"names": ["a"], "formats": ["O"], "titles": ["T"]})
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"w": np.array([(1,)], dtype=dtype)}, protocol=2))
    assert "SH108" in rules(scan_one(path))
