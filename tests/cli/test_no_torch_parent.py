"""``safehub load -o``, ``list`` and ``help`` never import torch in the CLI's own process:
the sandbox's child uses torch, the parent checks the result's safetensors bytes and
writes them.

Each run is a real process whose ``import torch`` fails (torch is installed and can be
found, only importing it raises), so a parent that imported torch anywhere on these
paths would exit with an error; the sandbox's zygote is a separate interpreter and
imports torch as always.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import safehub
from tests.conftest import REPO
from tests.sandbox.conftest import assert_same_tensors
from tests.sandbox.test_result_file import NO_TORCH_IMPORT

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

CLI = NO_TORCH_IMPORT + """
from safehub.cli import main
code = main(sys.argv[1:])
sys.stderr.write("\\nPARENT-IMPORTED-TORCH\\n" if "torch" in sys.modules else "")
raise SystemExit(code)
"""

HUBCONF = textwrap.dedent('''
    import torch


    def tiny(width=4):
        """A tiny random model."""
        return torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.LayerNorm(width))


    def pair():
        return torch.nn.Linear(3, 2), {"mask": torch.tensor([True, False]), "n": 7}


    def scripted():
        torch.manual_seed(3)
        return torch.nn.LayerNorm(5), torch.jit.script(torch.nn.Linear(3, 1))
''')


def _cli(*args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", CLI, *map(os.fspath, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "hubconf.py").write_text(HUBCONF)
    return folder


def test_load_list_and_help_run_without_torch_in_the_parent(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.safetensors"
    load = _cli("load", repo, "tiny", "width=8", "--source", "local", "--seed", "3",
                "--out", out, cwd=tmp_path)
    assert load.returncode == 0, load.stderr
    listed = _cli("list", repo, "--source", "local", cwd=tmp_path)
    helped = _cli("help", repo, "tiny", "--source", "local", cwd=tmp_path)
    for run in (load, listed, helped):
        assert "PARENT-IMPORTED-TORCH" not in run.stderr and "Traceback" not in run.stderr
    assert listed.returncode == 0 and listed.stdout.split() == ["pair", "scripted", "tiny"]
    assert helped.returncode == 0 and "A tiny random model." in helped.stdout
    # The same call through the Python API (tensors mapped with torch) gives the same file.
    want = safehub.load(str(repo), "tiny", source="local", seed=3, width=8)
    assert_same_tensors(safetensors_torch.load_file(out), dict(want))


def test_structures_are_written_with_their_prefixed_keys(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "pair.safetensors"
    run = _cli("load", repo, "pair", "--source", "local", "--seed", "0", "--out", out,
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "PARENT-IMPORTED-TORCH" not in run.stderr
    got = safetensors_torch.load_file(out)
    assert sorted(got) == ["0.bias", "0.weight", "1.mask"]
    assert got["1.mask"].dtype == torch.bool and got["1.mask"].tolist() == [True, False]
    assert_same_tensors(got, dict(safehub.load(str(repo), "pair", source="local", seed=0)))


def test_torchscript_archives_leave_the_file_without_torch(repo: Path, tmp_path: Path) -> None:
    # Where the policy accepts TorchScript, the archive crosses as a uint8 entry of the
    # result: the parent reads it by offset, scans it and writes it beside --out, and the
    # safetensors file holds only the weights.
    policy = tmp_path / "ts.toml"
    policy.write_text('schema = 1\nname = "ts"\nextends = "default"\n'
                      'loosen = ["scanner.allow_torchscript"]\n'
                      '[scanner]\nallow_torchscript = true\n', encoding="utf-8")
    out = tmp_path / "s.safetensors"
    run = _cli("load", repo, "scripted", "--source", "local", "--out", out,
               "--policy", policy, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "PARENT-IMPORTED-TORCH" not in run.stderr
    got = safetensors_torch.load_file(out)
    assert sorted(got) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    archive = (tmp_path / "s.torchscript-0.pt").read_bytes()
    assert archive[:2] == b"PK" and "'1'" in run.stderr
    # (the archive's bytes differ from run to run; what it holds does not)
    module = torch.jit.load(io.BytesIO(archive))  # type: ignore[no-untyped-call]
    assert_same_tensors({f"1.{k}": v for k, v in module.state_dict().items()},
                        {k: v for k, v in got.items() if k.startswith("1.")})
    want = safehub.load(str(repo), "scripted", source="local", policy=str(policy))
    assert list(want.torchscript) == ["1"]
    assert_same_tensors(got, dict(want))
