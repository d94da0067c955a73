"""safetensors: no code, but the header must agree exactly with the data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from safehub.findings import Verdict
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

st = pytest.importorskip("safetensors.numpy")


def test_files_written_by_safetensors_are_clean(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    st.save_file({"w": np.ones((3, 4), "f4"), "b": np.zeros(2, "f2"), "i": np.arange(3),
                  "e": np.zeros((0, 2), "f8"), "flag": np.ones(1, bool)}, path,
                 metadata={"format": "pt"})
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN and report.format == "safetensors"


def test_torch_safetensors_is_clean(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(2, dtype=torch.bfloat16), "x": torch.zeros(3)}, path)
    assert scan_one(path).verdict is Verdict.CLEAN


def test_every_dtype_the_reference_reads_is_known() -> None:
    """The dtype names the reference implementation accepts (its error for an unknown one
    lists them) are exactly the scanner's: F8_E4M3FNUZ and F8_E5M2FNUZ, which
    safetensors.torch writes for torch.float8_e4m3fnuz/e5m2fnuz, were SH150 "unknown
    dtype", so such a file that safetensors loads scanned UNSAFE."""
    import re

    from safehub._scanner.fmt_safetensors import DTYPE_BITS

    header = _h(t={"dtype": "NOT_A_DTYPE", "shape": [1], "data_offsets": [0, 1]})
    with pytest.raises(Exception, match="expected one of") as caught:
        st.load(_file(header, b"\0"))
    assert set(re.findall(r"`([A-Z0-9_]+)`", str(caught.value))) - {"NOT_A_DTYPE"} == set(
        DTYPE_BITS)


@pytest.mark.parametrize("dtype", ["float8_e4m3fnuz", "float8_e5m2fnuz"])
def test_torch_fnuz_float8_safetensors_is_clean(dtype: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "fp8.safetensors"
    save_file({"w": torch.ones(4, 2).to(getattr(torch, dtype))}, path)
    assert load_file(path)["w"].dtype == getattr(torch, dtype)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]


def _file(header: bytes | str, data: bytes) -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def _h(**tensors: object) -> str:
    return json.dumps(tensors)


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CASES = {
    "bad_json": _file('{"a": {', b""),
    "not_utf8": _file(b'{"a\xff": 1}', b""),
    "not_an_object": _file("[1, 2]  ", b""),
    "duplicate_keys": _file(f'{{"a": {json.dumps(T)}, "a": {json.dumps(T)}}}', b"\0" * 8),
    "unknown_dtype": _file(_h(a={**T, "dtype": "F128"}), b"\0" * 8),
    "shape_mismatch": _file(_h(a={**T, "shape": [3]}), b"\0" * 8),
    "negative_offset": _file(_h(a={**T, "data_offsets": [-8, 0]}), b"\0" * 8),
    "reversed_offsets": _file(_h(a={**T, "data_offsets": [8, 0]}), b"\0" * 8),
    "overlap": _file(_h(a=T, b={**T, "data_offsets": [4, 12]}), b"\0" * 12),
    "gap": _file(_h(a={**T, "data_offsets": [4, 12]}), b"\0" * 12),
    "out_of_range": _file(_h(a={**T, "shape": [4], "data_offsets": [0, 16]}), b"\0" * 8),
    "trailing_data": _file(_h(a=T), b"\0" * 9),
    "bool_in_shape": _file(_h(a={**T, "shape": [True, 2]}), b"\0" * 8),
    "bad_metadata": _file(_h(__metadata__={"k": 1}, a=T), b"\0" * 8),
    "entry_not_object": _file(_h(a=[1]), b"\0" * 8),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_header_attacks(name: str, tmp_path: Path) -> None:
    path = B.write(tmp_path / f"{name}.safetensors", CASES[name])
    report = scan_one(path)
    assert report.verdict is not Verdict.CLEAN, name
    if report.verdict is Verdict.UNSAFE:
        assert "SH150" in rules(report)


@pytest.mark.parametrize("name", sorted(set(CASES) - {"duplicate_keys", "bool_in_shape"}))
def test_the_safetensors_library_agrees(name: str, tmp_path: Path) -> None:
    """What the scanner calls malformed, the reference loader refuses too."""
    path = B.write(tmp_path / f"{name}.safetensors", CASES[name])
    with pytest.raises(Exception):  # noqa: B017 - the library's own error types vary
        st.load_file(path)


def test_huge_header_length_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    with open(path, "wb") as fh:  # a sparse file: the header length fits inside it
        fh.write(struct.pack("<Q", 200_000_000) + b"{" + b" " * 64)
        fh.truncate(200_000_100)
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH150" in rules(report)
