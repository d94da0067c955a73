"""TorchScript modules crossing the sandbox: weights only, unless the policy accepts
TorchScript; then the archive too, scanned (and refused when the scan refuses)."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import safehub
from safehub._sandbox.shape import ShapeError, parse
from safehub.errors import PolicyViolation, SandboxError
from tests.conftest import CliResult

HUBCONF = textwrap.dedent('''
    dependencies = ["torch"]
    import torch


    def scripted():
        torch.manual_seed(3)
        return torch.jit.script(torch.nn.Linear(3, 1))


    def pair():
        torch.manual_seed(3)
        return torch.jit.script(torch.nn.Linear(3, 1)), (lambda x: x)


    def forged(payload):
        # Repository code controls what the child sends: here, "its archive" is a pickle
        # that runs code when loaded.
        def save(module, f, *args, **kwargs):
            f.write(bytes.fromhex(payload))
        torch.jit.save = save
        return torch.jit.script(torch.nn.Linear(3, 1))


    def unasked():
        # ...and can make the child send an archive the parent did not ask for.
        import sys
        shape = sys.modules["safehub._sandbox.shape"]
        original = shape.flatten
        shape.flatten = lambda value, scripts=False: original(value, scripts=True)
        return torch.jit.script(torch.nn.Linear(3, 1))
''')


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "hubconf.py").write_text(HUBCONF)
    return root


def _accepting(tmp_path: Path) -> str:
    path = tmp_path / "ts.toml"
    path.write_text('schema = 1\nname = "ts"\nextends = "default"\n'
                    'loosen = ["scanner.allow_torchscript"]\n'
                    '[scanner]\nallow_torchscript = true\n', encoding="utf-8")
    return str(path)


def _expected() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return dict(torch.jit.script(torch.nn.Linear(3, 1)).state_dict())


def test_weights_only_where_the_policy_does_not_accept_torchscript(tmp_path: Path) -> None:
    state = safehub.load(str(_repo(tmp_path)), "scripted", source="local")
    assert sorted(state) == ["bias", "weight"]
    assert state.torchscript == {}
    assert state.shape.script and "does not accept TorchScript" in state.shape.reason
    assert any("does not accept TorchScript" in line for line in state.shape.describe())
    assert all(torch.equal(state[k], v) for k, v in _expected().items())


def test_archive_crosses_scanned_where_the_policy_accepts_it(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    state = safehub.load(str(repo), "scripted", source="local", policy=_accepting(tmp_path))
    assert sorted(state) == ["bias", "weight"]  # the archive is not a tensor of the result
    archive = state.torchscript[""]
    assert archive[:2] == b"PK" and "scanned and allowed" in state.shape.reason
    # The caller may load it (its code then runs in the caller's process: its choice).
    module = torch.jit.load(io.BytesIO(archive))  # type: ignore[no-untyped-call]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in _expected().items())

    pair = safehub.load(str(repo), "pair", source="local", policy=_accepting(tmp_path))
    assert sorted(pair) == ["0.bias", "0.weight"] and list(pair.torchscript) == ["0"]


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


def test_forged_archive_is_refused_by_the_scan(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Marker(str(marker)), protocol=2)
    # Without the scan: whoever loads these bytes runs the payload.
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads("
                    "bytes.fromhex(sys.argv[1]))", payload.hex()], check=True, timeout=120)
    assert marker.read_text() == "ran"
    marker.unlink()
    with pytest.raises(PolicyViolation, match="TorchScript archive") as info:
        safehub.load(str(_repo(tmp_path)), "forged", payload.hex(), source="local",
                     policy=_accepting(tmp_path))
    assert any("SH1" in step for step in info.value.trail)
    assert not marker.exists()


def test_unasked_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not asked for"):
        safehub.load(str(_repo(tmp_path)), "unasked", source="local")


@pytest.mark.parametrize("node", [
    {"k": "module", "type": "t", "keys": ["w"], "script": False, "archive": True},
    {"k": "module", "type": "t", "keys": ["w"], "script": True, "archive": "w"},
])
def test_malformed_archive_claims_are_refused(node: dict[str, object]) -> None:
    with pytest.raises(ShapeError):
        parse(node, ["w", "#torchscript"])


def test_archive_claim_must_match_a_sent_key() -> None:
    node = {"k": "module", "type": "t", "keys": ["w"], "script": True, "archive": True}
    assert parse(node, ["w", "#torchscript"]).archive == "#torchscript"
    with pytest.raises(ShapeError):
        parse(node, ["w"])  # claims a key that was not sent
    with pytest.raises(ShapeError):
        parse(dict(node, archive=False), ["w", "#torchscript"])  # a key nobody claims


def test_cli_writes_the_archive_only_under_an_accepting_policy(
        tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    repo = _repo(tmp_path)
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    plain = cli("load", repo, "scripted", "--source", "local", "--out", out)
    assert plain.code == 0 and "does not accept TorchScript" in plain.err
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"]
    accepted = cli("load", repo, "pair", "--source", "local", "--out", out,
                   "--policy", _accepting(tmp_path))
    assert accepted.code == 0, accepted.err
    archive = out.parent / "model.torchscript-0.pt"
    assert archive.read_bytes()[:2] == b"PK"
    # The archive left the result file (taken out by offset, without torch in the CLI).
    from safetensors.torch import load_file

    assert sorted(load_file(out)) == ["0.bias", "0.weight"]
    assert "'0'" in accepted.err and str(archive) in accepted.err
