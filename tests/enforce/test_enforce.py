"""safehub.enforce(): unmodified programs protected, in-process and through sitecustomize.

Each attack is shown firing in a plain Python process first; then the same program runs
with a sitecustomize.py that calls safehub.enforce(), untouched, and the attack is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import safehub
from safehub.errors import PolicyViolation, UnsafeModel


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "note": _Payload(marker)}, buf)
    path.write_bytes(buf.getvalue())
    return path


def _run(program: str, tmp_path: Path, *, enforced: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SAFEHUB_POLICY", "PYTHONPATH")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    if enforced:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        shipped = Path(__file__).resolve().parents[2] / "examples" / "sitecustomize.py"
        (site / "sitecustomize.py").write_text(shipped.read_text())
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(program)], capture_output=True,
                          text=True, env=env, timeout=180)


def test_unmodified_program_is_protected_through_sitecustomize(tmp_path: Path,
                                                               marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    ckpt = _malicious_checkpoint(tmp_path / "ckpt.pt", marker)
    program = f"""
        import torch
        state = torch.load({str(ckpt)!r}, weights_only=False)
        print("loaded", sorted(state))
    """
    plain = _run(program, tmp_path, enforced=False)
    assert plain.returncode == 0, plain.stderr
    assert marker.exists(), "without safehub the checkpoint runs its payload"
    marker.unlink()
    enforced = _run(program, tmp_path, enforced=True)
    assert enforced.returncode != 0
    assert "PolicyViolation" in enforced.stderr and "posix.system" in enforced.stderr
    assert not marker.exists()


def test_clean_checkpoints_still_load_weights_only(tmp_path: Path) -> None:
    ckpt = tmp_path / "clean.pt"
    torch.save({"w": torch.arange(3.0), "step": 7}, ckpt)
    program = f"""
        import torch
        state = torch.load({str(ckpt)!r}, weights_only=False, mmap=True)
        print(state["w"].tolist(), state["step"], torch.load.__code__.co_filename)
    """
    result = _run(program, tmp_path, enforced=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:4] == ["[0.0,", "1.0,", "2.0]", "7"]
    assert "safehub" in result.stdout, "torch.load is safehub's"


def test_enforce_in_process_and_undo(tmp_path: Path, marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    ckpt = _malicious_checkpoint(tmp_path / "ckpt.pt", marker)
    original = torch.load.__code__
    with safehub.enforce("default") as enforcement:
        assert torch.load.__code__ is not original
        with pytest.raises(PolicyViolation, match=r"posix\.system"):
            torch.load(ckpt, weights_only=False)
        with pytest.raises(PolicyViolation, match="pickle_module"):
            torch.load(ckpt, pickle_module=type(sys)("fake_pickle"))
        clean = tmp_path / "clean.pt"
        torch.save({"w": torch.ones(2)}, clean)
        with open(clean, "rb") as fh:
            assert torch.equal(torch.load(fh)["w"], torch.ones(2))
        assert enforcement.active
    assert torch.load.__code__ is original and not enforcement.active
    assert not marker.exists()


def test_policy_allowed_globals_reach_torchs_loader(tmp_path: Path) -> None:
    import fractions

    # fractions.Fraction: a value class outside the allowlist and the curated harmless set.
    ckpt = tmp_path / "fairseq.pt"
    torch.save({"args": fractions.Fraction(1, 10), "w": torch.ones(1)}, ckpt)
    policy = tmp_path / "p.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
                      '[scanner]\n'
                      'allowed_globals = ["fractions.Fraction"]\n')
    with safehub.enforce("default"), pytest.raises(PolicyViolation, match=r"fractions\.Fraction"):
        torch.load(ckpt)
    with safehub.enforce(policy):
        assert torch.load(ckpt)["args"] == fractions.Fraction(1, 10)


def test_torchscript_is_not_loaded_in_process(tmp_path: Path) -> None:
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "ts.pt"
    torch.jit.save(scripted, str(path))
    policy = tmp_path / "p.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allow_torchscript"]\n'
                      '[scanner]\nallow_torchscript = true\n')
    with safehub.enforce(policy), pytest.raises(PolicyViolation, match="TorchScript"):
        torch.load(path)


def test_weights_only_loader_refusal_is_unsafe_model(tmp_path: Path) -> None:
    # A raw pickle the scanner allows (plain data) but that is not a torch checkpoint.
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with safehub.enforce("default"), pytest.raises(
            (UnsafeModel, RuntimeError, pickle.UnpicklingError)):
        torch.load(path)


@pytest.mark.parametrize("call", [
    'torch.hub.load({repo!r}, "linear", source="local", trust_repo=True)',
    'torch.hub._load_local({repo!r}, "linear")',  # private, what load(source="local") calls
])
def test_torch_hub_load_runs_in_the_sandbox(tmp_path: Path, marker_dir: Path, call: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(f"""
        import os, torch
        os.system("touch {marker_dir}/imported")

        def linear():
            torch.manual_seed(0)
            return torch.nn.Linear(2, 2)
    """))
    program = f"""
        import torch
        out = {call.format(repo=str(repo))}
        # safehub.load returns a dict subclass (LoadedState: the keys plus .shape)
        print("dict" if isinstance(out, dict) else type(out).__name__,
              sorted(out) if isinstance(out, dict) else "")
    """
    plain = _run(program, tmp_path, enforced=False)
    assert plain.returncode == 0, plain.stderr
    assert (marker_dir / "imported").exists()
    (marker_dir / "imported").unlink()
    enforced = _run(program, tmp_path, enforced=True)
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout.strip() == "dict ['bias', 'weight']"
    assert not (marker_dir / "imported").exists()
