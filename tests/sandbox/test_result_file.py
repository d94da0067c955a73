"""The result written without torch: ``check_result`` validates the child's memfd on raw
bytes and ``TensorFile.write`` writes it as safetensors (what ``safehub load -o`` does).

The oracle is the real safetensors parser (``safetensors.torch.load_file``) and the
torch path (``read_tensors``) on the same memfd; the no-torch claim is checked in a
real process whose ``import torch`` fails.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from safehub._sandbox.result import check_result, new_result_file, read_tensors
from safehub._sandbox.writer import check_tensors, pack
from safehub.sandbox import BadResult
from tests.conftest import REPO
from tests.sandbox.conftest import assert_same_tensors
from tests.sandbox.test_boundary import MALFORMED, memfd, safetensors_bytes

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

# Importing torch fails here, but finding it works (as where torch is installed and the
# process must simply not import it): the spec's loader raises.
NO_TORCH_IMPORT = """
import importlib.abc, importlib.machinery, sys

class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ImportError("import torch refused by the test")

class _Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None

sys.meta_path.insert(0, _Finder())
"""


def _tensors() -> dict[str, Any]:
    base = torch.randn(5, 7)
    return {"z": base, "a": base.t(), "h": base.half(), "b16": base.bfloat16(),
            "i": torch.arange(5), "flag": torch.tensor([True, False, True]),
            "s": torch.tensor(2.5), "e": torch.empty(0, 3),
            "u8": torch.arange(250, 256, dtype=torch.uint8),
            "f8": torch.ones(3).to(torch.float8_e4m3fn), "c": torch.ones(2, dtype=torch.complex64),
            "name with \u00e9 and \"quotes\"": torch.ones(1)}


def test_written_file_equals_the_tensors_and_the_torch_path(tmp_path: Path) -> None:
    tensors = _tensors()
    out = tmp_path / "out.safetensors"
    packed = pack(check_tensors(tensors), new_result_file())
    with check_result(packed.fd, order=list(tensors)) as checked:
        assert len(checked) == len(tensors)
        size = checked.write(out)
    assert out.stat().st_size == size
    loaded = safetensors_torch.load_file(out)
    assert_same_tensors(loaded, tensors)
    assert_same_tensors(read_tensors(pack(check_tensors(tensors), new_result_file()).fd), loaded)


def test_the_header_is_rebuilt_not_copied(tmp_path: Path) -> None:
    # The child's header carries its own metadata and odd spacing: none of it is written.
    raw = (b'{ "__metadata__": {"format": "pt", "note": "from the child"},\n'
           b'  "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} }')
    data = torch.tensor([1.5, -2.0]).numpy().tobytes()
    out = tmp_path / "out.safetensors"
    with check_result(memfd(safetensors_bytes(raw, data))) as checked:
        checked.write(out)
    with safetensors_torch.safe_open(out, "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        assert torch.equal(fh.get_tensor("w"), torch.tensor([1.5, -2.0]))
    (n,) = struct.unpack("<Q", out.read_bytes()[:8])
    header = out.read_bytes()[8:8 + n]
    assert b"from the child" not in header and b"\n" not in header
    assert (8 + n) % 8 == 0


def test_an_entry_taken_out_is_neither_written_nor_mapped(tmp_path: Path) -> None:
    # A TorchScript archive crosses as a uint8 entry: the CLI takes its bytes out by
    # offset (no torch) and writes the rest, packed without the gap and still aligned.
    tensors = _tensors()
    archive = bytes(range(256)) * 3 + b"odd"  # a length that is no multiple of 8
    sent = {"#torchscript": torch.frombuffer(bytearray(archive), dtype=torch.uint8), **tensors}
    out = tmp_path / "out.safetensors"
    packed = pack(check_tensors(sent), new_result_file())
    with check_result(packed.fd, order=list(sent)) as checked:
        spec, data = checked.take("#torchscript")
        assert (spec.dtype, spec.shape, data) == ("U8", (len(archive),), archive)
        with pytest.raises(KeyError):
            checked.take("#torchscript")
        assert len(checked) == len(tensors)
        size = checked.write(out)
        assert_same_tensors(checked.tensors(), tensors)
    assert out.stat().st_size == size
    loaded = safetensors_torch.load_file(out)
    assert_same_tensors(loaded, tensors)
    (n,) = struct.unpack("<Q", out.read_bytes()[:8])
    header = json.loads(out.read_bytes()[8:8 + n])
    assert "#torchscript" not in header
    for name, info in header.items():
        if name != "__metadata__":
            assert (8 + n + info["data_offsets"][0]) % loaded[name].element_size() == 0


@pytest.mark.parametrize("data, seals, words", MALFORMED)
def test_raw_checks_refuse_what_the_torch_path_refuses(data: bytes, seals: int,
                                                       words: str) -> None:
    with pytest.raises(BadResult, match=words) as info:
        check_result(memfd(data, seals))
    assert info.value.rule_id == "SH503"


def test_a_refused_result_leaves_no_descriptor_open() -> None:
    fd = memfd(safetensors_bytes(b"{not json"))
    with pytest.raises(BadResult):
        check_result(fd)
    with pytest.raises(OSError):
        os.fstat(fd)


SCRIPT = NO_TORCH_IMPORT + """
import json, os, sys
from safehub._sandbox.result import check_result
from safehub.sandbox import BadResult

with open(sys.argv[1]) as fh:
    request = json.load(fh)
cases, good, out = request["cases"], bytes.fromhex(request["good"]), request["out"]

def memfd(data, seals):
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd

refused = []
for data, seals in cases:
    try:
        check_result(memfd(bytes.fromhex(data), seals))
    except BadResult as exc:
        refused.append(exc.rule_id)
from safehub._sandbox.writer import SEALS
with check_result(memfd(good, SEALS)) as checked:
    checked.write(out)
print(json.dumps({"refused": refused, "torch": "torch" in sys.modules}))
"""


def test_checks_and_write_run_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    tensors = _tensors()
    packed = pack(check_tensors(tensors), new_result_file())
    good = os.pread(packed.fd, packed.size, 0)
    os.close(packed.fd)
    cases = [[data.hex(), seals] for data, seals, _ in MALFORMED]
    out = tmp_path / "out.safetensors"
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"cases": cases, "good": good.hex(), "out": str(out)}))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(request)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer == {"refused": ["SH503"] * len(MALFORMED), "torch": False}
    assert_same_tensors(safetensors_torch.load_file(out), tensors)
