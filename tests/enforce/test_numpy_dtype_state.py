"""Under enforcement, pickle.load refuses numpy dtype states numpy takes unchecked (SH108).

The restricted unpickler allows ``numpy.dtype``, ``_reconstruct`` and ``ndarray`` (every
pickled array needs them), and ``numpy.dtype.__setstate__`` takes the flags and layout
from the pickle: numpy's own pickle of an int64 array with its dtype renamed ``O8`` loaded
under enforcement as an object array of the file's raw bytes (touching it crashed the
process on the file's pointer). The scanner's side is tests/scanner/test_numpy_dtype_state.py.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import safehub
from safehub.errors import UnsafeModel
from tests.enforce.test_bypasses import _ROOT, _run

np = pytest.importorskip("numpy")


def _object_array_of_raw_bytes() -> bytes:
    data = pickle.dumps({"w": np.frombuffer(b"\x41" * 8, dtype="<i8")}, protocol=2)
    assert data.count(b"i8") == 1
    return data.replace(b"i8", b"O8")


def _field_past_the_item() -> bytes:
    dtype = np.dtype.__new__(np.dtype, "V8")
    dtype.__setstate__((3, "|", None, ("a",), {"a": (np.dtype("<f8"), 1 << 20)}, 8, 1, 16))
    return pickle.dumps({"w": np.zeros(1, dtype=dtype)}, protocol=2)


def test_unchecked_dtype_states_are_refused_and_real_ones_load() -> None:
    hostile = _object_array_of_raw_bytes()
    loaded = pickle.loads(hostile)["w"]  # without safehub: an object dtype without objects
    assert loaded.dtype.kind == "O" and not loaded.dtype.hasobject
    real = {"rec": np.array([(1, None, (2.0, 3.0))],
                            dtype=[("a", "<i4"), ("o", "O"), ("s", "<f8", (2,))]),
            "u": np.array(["ab"]), "t": np.array(["2020-01-01"], dtype="M8[D]"),
            "obj": np.array([1, "x"], dtype=object), "dt": np.dtype(("<f4", (3,)))}
    with safehub.enforce("default"):
        for data in (hostile, _field_past_the_item()):
            with pytest.raises(UnsafeModel, match="SH108"):
                pickle.loads(data)
        back = pickle.loads(pickle.dumps(real, protocol=2))
    assert back["rec"].dtype == real["rec"].dtype and back["rec"][0]["o"] is None
    assert back["dt"] == real["dt"] and back["t"].dtype == real["t"].dtype


def test_swapped_object_dtype_is_refused() -> None:
    """numpy keeps a state's byte order even on an object dtype ('>O'): such an array
    loaded with its objects, and a cast of it byte-swapped the pointers (a crash)."""
    data = pickle.dumps({"w": np.array([1, "x"], dtype=object)}, protocol=2)
    assert data.count(b"X\x01\x00\x00\x00|") == 1
    hostile = data.replace(b"X\x01\x00\x00\x00|", b"X\x01\x00\x00\x00>")
    assert pickle.loads(hostile)["w"].dtype.byteorder == ">"  # without safehub
    swapped = {"f": np.array([1.5], dtype=">f8"), "u": np.array(["ab"], dtype=">U2")}
    with safehub.enforce("default"):
        with pytest.raises(UnsafeModel, match="SH108"):
            pickle.loads(hostile)
        back = pickle.loads(pickle.dumps(swapped, protocol=2))
    assert back["f"].tolist() == [1.5] and back["u"].tolist() == ["ab"]


# numpy.ndarray((4,), 'O', b'A' * 32): the allowed array class called directly takes the
# buffer as the array's memory, read as object pointers (numpy refuses that only in
# frombuffer). Every call opcode: REDUCE, NEWOBJ, NEWOBJ_EX (buffer as a keyword), INST.
_BUFFER = b"C\x20" + b"A" * 32
_ARRAY_CALLS = {
    "reduce": b"\x80\x02cnumpy\nndarray\n(K\x04\x85X\x01\x00\x00\x00O" + _BUFFER + b"tR.",
    "newobj": b"\x80\x02cnumpy\nndarray\n(K\x04\x85X\x01\x00\x00\x00O" + _BUFFER + b"t\x81.",
    "newobj_ex": b"\x80\x04\x8c\x05numpy\x8c\x07ndarray\x93K\x04\x85\x8c\x01O\x86}\x8c\x06buffer"
                 + _BUFFER + b"s\x92.",
    "inst": b"((I4\ntVO\n" + _BUFFER + b"inumpy\nndarray\n.",
}


@pytest.mark.parametrize(("call", "entry"), [
    ("reduce", "pickle.loads(D)"), ("newobj", "numpy.load(io.BytesIO(D), allow_pickle=True)"),
    ("newobj_ex", "joblib.load(io.BytesIO(D))"), ("inst", "pickle._loads(D)")])
def test_an_array_made_on_the_files_bytes_is_refused(tmp_path: Path, call: str,
                                                     entry: str) -> None:
    data = _ARRAY_CALLS[call]
    # numpy.load re-raises what the unpickler raised as its cause
    program = (f"import io, pickle, joblib, numpy\nD = {data!r}\ntry:\n    a = {entry}\n"
               "except Exception as exc:\n    print('REFUSED', repr(exc), repr(exc.__cause__))\n"
               "else:\n    print('LOADED', a.dtype, flush=True)\n    print(a[0])\n")
    plain = _run(program, tmp_path, site=False)
    assert plain.stdout.startswith("LOADED object"), (plain.stdout, plain.stderr)
    assert plain.returncode < 0, (plain.stdout, plain.stderr)  # the file's bytes as a pointer

    enforced = _run(program, tmp_path, site=True)
    assert "REFUSED" in enforced.stdout and "UnsafeModel(\"SH108" in enforced.stdout, (
        enforced.stdout, enforced.stderr)
    path = tmp_path / "array.pkl"
    path.write_bytes(data)
    scan = subprocess.run([sys.executable, "-m", "safehub", "scan", str(path)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(_ROOT)})
    assert scan.returncode == 1 and "SH108" in scan.stdout, (scan.stdout, scan.stderr)


def test_an_array_made_on_the_files_bytes_is_refused_in_a_torch_checkpoint(
        tmp_path: Path) -> None:
    """torch.load under enforce() hands torch's weights-only loader numpy's array names
    (scoped to the call): the direct ndarray call loaded and crashed on first use."""
    from tests.enforce.test_bypasses import _checkpoint_with_pickle

    buffer = b"c_codecs\nencode\nX\x20\x00\x00\x00" + b"A" * 32 + b"X\x06\x00\x00\x00latin1\x86R"
    data = b"\x80\x02cnumpy\nndarray\n(K\x04\x85X\x01\x00\x00\x00O" + buffer + b"tR."
    _checkpoint_with_pickle(tmp_path / "w.pt", data)
    program = "import torch\n" + (
        "try:\n    a = torch.load('w.pt'{})\nexcept Exception as exc:\n    print('REFUSED', exc)\n"
        "else:\n    print('LOADED', a.dtype, flush=True)\n    print(a[0])\n")
    plain = _run(program.format(", weights_only=False"), tmp_path, site=False)
    assert plain.stdout.startswith("LOADED object") and plain.returncode < 0, (
        plain.stdout, plain.stderr)
    enforced = _run(program.format(""), tmp_path, site=True)
    assert "REFUSED" in enforced.stdout and "SH108" in enforced.stdout, (enforced.stdout,
                                                                         enforced.stderr)


def _title_state(title_spec: tuple[object, ...], extra: dict[str, object] | None = None
                 ) -> bytes:
    i4 = np.dtype("<i4")
    dtype = np.dtype.__new__(np.dtype, "V8")
    fields = {"a": (i4, 0, "T"), "T": title_spec, **(extra or {})}
    dtype.__setstate__((3, "|", None, ("a",), fields, 8, 1, 16))
    return pickle.dumps({"w": np.zeros(1, dtype=dtype)}, protocol=2)


def test_title_entries_are_checked_like_fields() -> None:
    """A titled field's title is a fields key of its own (``arr['T']``), and its entry came
    from the pickle unchecked: the layout rebuilt from the names matched, so a title entry
    1 TiB past the item loaded under enforcement and reading ``w[0]['T']`` crashed the
    process (shown in a subprocess). Now every key must be numpy's own; real titled
    arrays load."""
    import subprocess
    import sys

    far = _title_state((np.dtype("<i4"), 1 << 40, "T"))
    code = ("import pickle, sys, safehub; safehub.enforce('default'); "
            "w = pickle.loads(sys.stdin.buffer.read())['w']; w[0]['T']")
    before = subprocess.run([sys.executable, "-c", code.replace("safehub.enforce('default'); ",
                                                                "")],
                            input=far, capture_output=True, timeout=120, check=False)
    assert before.returncode < 0, before  # without safehub: the read crashes
    hostile = [far, _title_state((np.dtype("<f8"), 0, "T")),
               _title_state((np.dtype("<i4"), 0, "T"), {"x": (np.dtype("<i4"), 4)})]
    titled = np.dtype({"names": ["a", "b"], "formats": ["<i4", "O"], "titles": ["T", None]})
    real = np.array([(1, "x")], dtype=titled)
    with safehub.enforce("default"):
        for data in hostile:
            with pytest.raises(UnsafeModel, match="SH108"):
                pickle.loads(data)
        back = pickle.loads(pickle.dumps(real, protocol=2))
    assert back.dtype == titled and back[0]["T"] == 1 and back[0]["b"] == "x"


def test_a_field_whose_dtype_is_a_string_is_refused() -> None:
    """numpy's ``dtype.__setstate__`` keeps a field entry ``('<i4', 0)`` as given, and a
    dtype compares equal to its string: the state matched the layout rebuilt from it,
    pickle.load under enforcement returned the array, and its first ``copy()`` crashed
    (numpy reads the string as a dtype). Each field's dtype must be a dtype."""
    dtype = np.dtype.__new__(np.dtype, "V4")
    dtype.__setstate__((3, "|", None, ("a",), {"a": ("<i4", 0)}, 4, 1, 16))
    data = pickle.dumps({"w": np.zeros(2, dtype=dtype)}, protocol=2)
    code = ("import pickle, sys, safehub; safehub.enforce('default'); "
            "w = pickle.loads(sys.stdin.buffer.read())['w']; print('loaded', flush=True); "
            "w.copy()")
    before = subprocess.run([sys.executable, "-c", code.replace("safehub.enforce('default'); ",
                                                                "")],
                            input=data, capture_output=True, timeout=120, check=False)
    assert before.stdout == b"loaded\n" and before.returncode < 0, before
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    enforced = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                              timeout=120, check=False, env=env)
    assert enforced.returncode == 1 and b"UnsafeModel: SH108" in enforced.stderr, enforced
