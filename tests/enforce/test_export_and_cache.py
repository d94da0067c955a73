"""torch's other deserializers of code-like data: an ExportedProgram archive's constants
(TorchScript's native unpickler), dynamic shapes specs (``sympy.sympify``) and compile
cache artifacts (written where their keys say). Each is shown working for an attacker
without safehub first."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import safehub
from safehub.errors import PolicyViolation
from tests.enforce.test_bypasses import _guarded, _run


def _custom_obj_bytes() -> bytes:
    """A ``torch._C._pickle_save`` archive of quantized packed weights whose tensor claims
    2**48 bytes of a 4-byte storage: torch's native unpickler reads it (and says so)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weight = torch.quantize_per_tensor(torch.ones(2, 2), 0.1, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(weight, None)
    source = zipfile.ZipFile(io.BytesIO(torch._C._pickle_save(packed)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"(K\x02K\x02t(K\x02K\x01t",
                                    b"(J\x00\x00\x00\x01J\x00\x00\x00\x01t(J\x00\x00\x00\x01K"
                                    b"\x01t")
            target.writestr(info, data)
    return out.getvalue()


def _archive_with_custom_obj(path: Path) -> Path:
    """A real torch.export archive with one more constant: a ``custom_obj_*`` record."""

    class AddConstant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("c", torch.ones(3), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 + self.c

    clean = path.with_suffix(".clean.pt2")
    torch.export.save(torch.export.export(AddConstant(), (torch.ones(3),)), str(clean))
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(path, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("model_constants_config.json"):
                config = json.loads(data)
                config["config"]["extra"] = {"path_name": "custom_obj_0", "is_param": False,
                                             "use_pickle": True, "tensor_meta": None}
                data = json.dumps(config).encode()
            zout.writestr(info.filename, data)
        zout.writestr(f"{prefix}/data/constants/custom_obj_0", _custom_obj_bytes())
    return path


def test_an_exported_program_archive_is_refused_before_its_constants_are_read(
        tmp_path: Path) -> None:
    """torch.export.load passed the archive's custom_obj constants to TorchScript's native
    unpickler (torch._C._pickle_load_obj) before enforcement refused the program."""
    from torch.export.pt2_archive._package import load_pt2

    path = _archive_with_custom_obj(tmp_path / "model.pt2")
    with pytest.raises(RuntimeError, match="storage only has 4 bytes"):
        load_pt2(str(path))  # the native unpickler read the record

    with safehub.enforce():
        for load in (lambda: load_pt2(str(path)), lambda: torch.export.load(str(path))):
            with pytest.raises(PolicyViolation, match="ExportedProgram"):
                load()


def test_torchs_native_unpickler_is_refused_when_reached_directly() -> None:
    data = torch._C._pickle_save(torch.ones(2))
    pickle_load_obj = torch._C._pickle_load_obj
    # The only caller in torch (an ExportedProgram's constants) is refused before it.
    with safehub.enforce(), pytest.raises(PolicyViolation, match="_pickle_load_obj"):
        torch._C._pickle_load_obj(data)
    assert torch._C._pickle_load_obj is pickle_load_obj
    assert torch._C._pickle_load_obj(data).tolist() == [1.0, 1.0]


# --- dynamic shapes specs: every name and derived expression goes to sympy.sympify -------

def _spec(marker: Path) -> dict[str, object]:
    payload = ("sympify.__globals__['__builtins__']['exec']"
               f"('open(\"{marker}\", \"w\").close()')")
    return {"dims": {"dx": {"min": 2, "max": 10, "derived": [payload]}},
            "dynamic_shapes": {"x": {"0": "dx"}}}


@pytest.mark.parametrize("where", ["derived", "name"])
def test_a_dynamic_shapes_spec_cannot_run_code(tmp_path: Path, marker_dir: Path,
                                               where: str) -> None:
    marker = marker_dir / "fired"
    spec = _spec(marker)
    if where == "name":
        dims = spec["dims"]
        assert isinstance(dims, dict)
        spec["dims"] = {dims["dx"]["derived"][0]: {"min": 2, "max": 10, "derived": []}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    load = ("import json\nfrom torch._export.serde.dynamic_shapes import _load_dynamic_shapes\n"
            + _guarded("_load_dynamic_shapes(json.load(open('spec.json')), from_dict=True)"))
    plain = _run(load, tmp_path, site=False)
    assert marker.exists(), (plain.stdout, plain.stderr)
    marker.unlink()

    enforced = _run(load, tmp_path, site=True)
    assert "REFUSED PolicyViolation" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert not marker.exists()


def test_a_dynamic_shapes_spec_torch_wrote_still_loads() -> None:
    from torch._export.serde.dynamic_shapes import _dump_dynamic_shapes, _load_dynamic_shapes

    dx = torch.export.Dim("dx", min=2, max=100)
    shapes = {"x": {0: dx}, "y": {0: 2 * dx + 1, 1: dx - 1}, "z": {0: dx * 3}}
    inputs = (torch.ones(4), torch.ones(9, 3), torch.ones(12))
    as_dict = _dump_dynamic_shapes(shapes, inputs, to_dict=True)
    as_spec = _dump_dynamic_shapes(shapes, inputs)
    expected = str(_load_dynamic_shapes(as_spec))
    with safehub.enforce():
        assert str(_load_dynamic_shapes(as_dict, from_dict=True)) == expected
        assert str(_load_dynamic_shapes(as_spec)) == expected


# --- compile cache artifacts: each is written where its key says -------------------------

def _cache_artifacts(target: Path, content: bytes) -> bytes:
    """Real mega-cache bytes (torch's own writer) with one autotune record keyed by an
    absolute path."""
    from torch.compiler._cache import (
        CacheArtifactFactory,
        CacheArtifactManager,
        _serialize_single_cache,
    )
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    artifact = CacheArtifactFactory.create("autotune", str(target), content)
    writer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    writer.append(("autotune", [artifact]))
    return writer.to_bytes()


def test_compile_cache_artifacts_are_refused(tmp_path: Path, marker_dir: Path) -> None:
    # torch.compiler.load_cache_artifacts writes each record's bytes at its key, joined to
    # the cache folder: an absolute key is any path (a .pth in site-packages, ~/.bashrc).
    target = marker_dir / "planted.py"
    (tmp_path / "cache.bin").write_bytes(_cache_artifacts(target, b"import os  # planted\n"))
    load = ("import torch\n"
            + _guarded("torch.compiler.load_cache_artifacts(open('cache.bin', 'rb').read())"))
    plain = _run(f"import os\nos.environ['TORCHINDUCTOR_CACHE_DIR'] = {str(tmp_path / 'c')!r}\n"
                 + load, tmp_path, site=False)
    assert target.read_bytes() == b"import os  # planted\n", (plain.stdout, plain.stderr)
    target.unlink()

    enforced = _run(load, tmp_path, site=True)
    assert "REFUSED PolicyViolation" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert not target.exists()
