"""``safehub convert`` and ``safehub.convert.save``: round trips for every dtype, bfloat16
handled openly, npz read by numpy and MLX, the sandbox containing what it loads, atomic
writes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safehub.convert import OutputFormat, convert, save
from safehub.errors import SafehubError, UnsafeModel
from tests.conftest import CliResult

Cli = Callable[..., CliResult]

# Every dtype torch and safetensors share. numpy: the ones it has.
_DTYPES = ["float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "float8_e4m3fn",
           "float8_e5m2"]
_NUMPY_LESS = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}


def _tensors() -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    for name in _DTYPES:
        dtype = getattr(torch, name)
        base = torch.randn(3, 4, generator=g) * 10
        if name == "bool":
            t = base > 0
        elif name.startswith("uint"):
            t = base.abs().to(torch.int64).to(dtype)
        elif name.startswith("complex"):
            t = torch.complex(base, -base).to(dtype)
        else:
            t = base.to(dtype)
        out[f"layer.{name}"] = t
    out["scalar"] = torch.tensor(3.5)
    out["empty"] = torch.zeros(0, 5)
    return out


def _torch_file(path: Path, obj: object, *, legacy: bool = False) -> Path:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _equal(a: Any, b: Any) -> bool:
    import torch

    # Bitwise: float8 has no == on some builds, and NaN-free data compares exactly.
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        if a.numel() else True)


# --- save(): in memory, no sandbox needed ------------------------------------------------------


def test_safetensors_round_trip_keeps_every_dtype_and_name(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = _tensors()
    out = save(tensors, tmp_path / "all.safetensors")
    back = load_file(out)
    assert set(back) == set(tensors)
    for key, t in tensors.items():
        assert _equal(back[key], t), key
    assert not (tmp_path / "all.safetensors.metadata.json").exists()  # only tensors


def test_npz_refuses_bfloat16_unless_upcast_and_always_refuses_float8(tmp_path: Path) -> None:
    import numpy as np
    import torch

    tensors = {k: v for k, v in _tensors().items() if "float8" not in k}
    with pytest.raises(SafehubError) as refused:
        save(tensors, tmp_path / "a.npz")
    assert "bfloat16" in refused.value.message and "upcast" in (refused.value.fix or "")
    assert not (tmp_path / "a.npz").exists()
    out = save(tensors, tmp_path / "a.npz", upcast_bfloat16=True)
    arrays = np.load(out, allow_pickle=False)
    assert set(arrays.files) == set(tensors)
    for key, t in tensors.items():
        if key == "layer.bfloat16":
            assert arrays[key].dtype == np.float32
            assert torch.equal(torch.from_numpy(arrays[key]), t.to(torch.float32))  # exact
        else:
            assert arrays[key].dtype == t.numpy().dtype, key
            assert np.array_equal(arrays[key], t.numpy()), key
    with pytest.raises(SafehubError) as fp8:
        save({"x": torch.zeros(2, dtype=torch.float8_e4m3fn)}, tmp_path / "b.npz",
             upcast_bfloat16=True)
    assert "float8_e4m3fn" in fp8.value.message and not (tmp_path / "b.npz").exists()


def test_mlx_reads_both_outputs(tmp_path: Path) -> None:
    mx = pytest.importorskip(
        "mlx.core", reason="mlx is not installed (test-only dev extra: `pip install "
        "'mlx[cpu]'` on Linux x86-64, `mlx` on Apple silicon)")
    import numpy as np
    import torch

    tensors = {k: v for k, v in _tensors().items()
               if k.split(".")[-1] not in ("float8_e4m3fn", "float8_e5m2", "float64",
                                           "uint64")}
    npz = save(tensors, tmp_path / "m.npz", upcast_bfloat16=True)
    loaded = mx.load(str(npz))
    assert set(loaded) == set(tensors)
    for key, t in tensors.items():
        want = t.to(torch.float32) if t.dtype == torch.bfloat16 else t
        assert np.array_equal(np.array(loaded[key]), want.numpy()), key
    st = save(tensors, tmp_path / "m.safetensors")
    native = mx.load(str(st))
    assert native["layer.bfloat16"].dtype == mx.bfloat16  # kept, not upcast
    assert np.array_equal(np.array(native["layer.bfloat16"].astype(mx.float32)),
                          tensors["layer.bfloat16"].to(torch.float32).numpy())


def test_save_nested_state_and_tied_weights(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    shared = torch.arange(4.0)
    state = {"model": {"embed.weight": shared, "head.weight": shared}, "step": 3,
             "names": ["a", "b"], "nan": float("nan")}
    out = save(state, tmp_path / "n.safetensors")
    back = load_file(out)
    assert torch.equal(back["model.embed.weight"], shared)
    assert torch.equal(back["model.head.weight"], shared)
    meta = json.loads((tmp_path / "n.safetensors.metadata.json").read_text())
    assert meta["structure"]["step"] == 3 and meta["structure"]["names"] == ["a", "b"]
    assert meta["structure"]["nan"] == {"$float": "nan"}
    assert meta["structure"]["model"]["head.weight"] == {"$tensor": "model.head.weight"}


def test_writes_are_atomic_when_the_disk_refuses(tmp_path: Path) -> None:
    # A real write failure: the file-size limit makes the write fail half-way.
    code = """
import resource, signal, sys, torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from safehub.convert import save
from safehub.errors import SafehubError
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    save({"big": torch.zeros(1 << 20)}, sys.argv[1])
except SafehubError as exc:
    print("failed:", exc.message)
"""
    for name in ("big.safetensors", "big.npz"):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                              text=True, timeout=120)
        assert "failed:" in proc.stdout, proc.stderr
        assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no file, no temp file


# --- convert(): loaded in the sandbox -----------------------------------------------------------


@pytest.mark.slow
def test_convert_torch_formats_in_the_sandbox(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    for legacy in (False, True):
        tensors = _tensors()
        if legacy:  # torch's own legacy format cannot store these (torch.load fails on them)
            tensors = {k: v for k, v in tensors.items()
                       if not k.endswith(("uint16", "uint32", "uint64", "float8_e4m3fn",
                                          "float8_e5m2"))}
        src = _torch_file(tmp_path / f"m{int(legacy)}.pth", tensors, legacy=legacy)
        result = convert(src)
        assert result.output == src.with_suffix(".safetensors")
        assert result.metadata is None and result.tensors == len(tensors)
        back = load_file(result.output)
        for key, t in tensors.items():
            assert _equal(back[key], t), key


@pytest.mark.slow
def test_convert_keeps_plain_data_and_names_what_it_drops(tmp_path: Path) -> None:
    import fractions

    import torch

    policy = tmp_path / "p.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
                      '[scanner]\n'
                      'allowed_globals = ["fractions.Fraction"]\n')
    src = _torch_file(tmp_path / "ck.pt", {
        "state_dict": {"w": torch.ones(2, 2)}, "optimizer": {"state": {0: {"step": 5}}},
        "epoch": 4, "args": fractions.Fraction(1, 10)})
    with pytest.raises(UnsafeModel):  # fractions.Fraction is not allowed by default
        convert(src)
    result = convert(src, policy=policy)
    meta = json.loads(result.metadata.read_text()) if result.metadata else {}
    assert meta["structure"]["epoch"] == 4
    assert meta["structure"]["optimizer"] == {"state": {"0": {"step": 5}}}
    assert meta["structure"]["state_dict"] == {"w": {"$tensor": "state_dict.w"}}
    assert meta["dropped"] == ["args (fractions.Fraction)"] == list(result.dropped)
    assert meta["source_sha256"] == result.source_sha256


@pytest.mark.slow
def test_malicious_checkpoint_is_refused_and_contained(tmp_path: Path, cli: Cli) -> None:
    import torch

    marker = tmp_path / "markers" / "pwned"
    marker.parent.mkdir()

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3), "hook": Payload()}, buf)
    src = tmp_path / "evil.pth"
    src.write_bytes(buf.getvalue())
    # Without safehub, loading it runs the payload.
    subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], "
                    "weights_only=False)", str(src)], capture_output=True, timeout=120)
    assert marker.exists()
    marker.unlink()
    refused = cli("convert", str(src))
    assert refused.code == 1 and "SH100" in refused.err
    assert not (tmp_path / "evil.safetensors").exists()
    # Unpickled in full in the sandbox: the payload runs there and cannot reach the host.
    result = cli("convert", str(src), "--unsafe-full-unpickle", "--json")
    assert result.code == 0, result.err
    assert "UNSAFE" in result.err
    assert not marker.exists()
    body = json.loads(result.out)
    assert body["tensors"] == 1
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "evil.safetensors")["w"], torch.ones(3))


@pytest.mark.slow
def test_cli_convert_npz_with_bfloat16(tmp_path: Path, cli: Cli) -> None:
    import numpy as np
    import torch

    src = _torch_file(tmp_path / "b.pth", {"w": torch.ones(2, dtype=torch.bfloat16)})
    refused = cli("convert", str(src), "--format", "npz")
    assert refused.code == 2 and "--upcast-bfloat16" in refused.err
    assert not (tmp_path / "b.npz").exists()
    done = cli("convert", str(src), "--format", "npz", "--upcast-bfloat16")
    assert done.code == 0, done.err
    assert np.load(tmp_path / "b.npz")["w"].dtype == np.float32
    again = cli("convert", str(src), "--format", "npz", "--upcast-bfloat16")
    assert again.code == 2 and "exists" in again.err  # never overwritten silently


def test_safetensors_to_npz_needs_no_sandbox(tmp_path: Path) -> None:
    import numpy as np
    import torch

    st = save({"a.b": torch.arange(3, dtype=torch.int32)}, tmp_path / "x.safetensors")
    result = convert(st, format=OutputFormat.NPZ)
    assert np.load(result.output)["a.b"].tolist() == [0, 1, 2]
    with pytest.raises(SafehubError):
        convert(st)  # already safetensors
    (tmp_path / "n.txt").write_text("not a checkpoint")
    with pytest.raises(SafehubError):
        convert(tmp_path / "n.txt")
