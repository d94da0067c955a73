"""safehub.hub's torch.hub-compatible functions: signatures, locations, loading."""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import safehub
from safehub.errors import IntegrityError, PolicyViolation
from tests.fetch.fakehub import FakeHub

FUNCTIONS = ["get_dir", "set_dir", "download_url_to_file", "load_state_dict_from_url", "load",
             "list", "help"]
# Keyword-only additions: every function takes policy=; load takes into=; list and help take
# source= (torch.hub's only read GitHub; safehub's also read local folders).
EXTRAS = {"load": ["policy", "into", "seed", "trust_nested", "lockfile", "frozen"],
          "list": ["source", "policy", "lockfile", "frozen"],
          "help": ["source", "policy", "lockfile", "frozen"]}
# Where safehub deliberately differs from torch.hub (documented in each docstring).
DOCUMENTED_DEFAULTS = {("load_state_dict_from_url", "weights_only"): (False, True)}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_signatures_match_torch_hub(name: str) -> None:
    import torch.hub

    ours = inspect.signature(getattr(safehub, name)).parameters
    theirs = inspect.signature(getattr(torch.hub, name)).parameters
    extra = [p for p in ours if p not in theirs]
    assert extra in ([], ["policy"], EXTRAS.get(name))
    for added in extra:
        assert ours[added].kind is inspect.Parameter.KEYWORD_ONLY, added
        assert ours[added].default in (None, "github", False), added
    assert [p for p in ours if p not in extra] == list(theirs), "same names, same order"
    for pname, theirs_p in theirs.items():
        ours_p = ours[pname]
        assert ours_p.kind == theirs_p.kind, pname
        expected = DOCUMENTED_DEFAULTS.get((name, pname))
        if expected is not None:
            assert (theirs_p.default, ours_p.default) == expected
            assert pname in (getattr(safehub, name).__doc__ or ""), "the difference is documented"
        else:
            assert ours_p.default == theirs_p.default, pname


@pytest.mark.parametrize(("env", "expected"), [
    ({"TORCH_HOME": "{tmp}/th"}, "{tmp}/th/hub"),
    ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/torch/hub"),
    ({"HOME": "{tmp}/home"}, "{tmp}/home/.cache/torch/hub"),
    ({"TORCH_HOME": "~/th", "HOME": "{tmp}/home"}, "{tmp}/home/th/hub"),
])
def test_get_dir_follows_torch_hub_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         env: dict[str, str], expected: str) -> None:
    import torch.hub

    for var in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(tmp=tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert safehub.get_dir() == expected.format(tmp=tmp_path) == torch.hub.get_dir()


def test_set_dir_overrides_like_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    safehub.set_dir("~/mine")
    assert safehub.get_dir() == str(tmp_path / "mine")
    safehub.set_dir(tmp_path / "other")
    assert safehub.get_dir() == str(tmp_path / "other")


def test_torch_hub_set_dir_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub.get_dir's rules include its own set_dir: a program that set it gets the
    same folder from safehub (and its checkpoints/ as the torch.hub source)."""
    import torch.hub

    from safehub.fetch import Fetcher

    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(tmp_path / "torch-chosen"))
    assert safehub.get_dir() == torch.hub.get_dir() == str(tmp_path / "torch-chosen")
    fetcher = Fetcher("default")
    assert fetcher.torch_model_dir == tmp_path / "torch-chosen" / "checkpoints"
    assert fetcher.cache_dir == tmp_path / "torch-chosen" / "safehub"
    safehub.set_dir(tmp_path / "safehub-chosen")  # safehub's own set_dir still wins
    assert safehub.get_dir() == str(tmp_path / "safehub-chosen")


def test_load_state_dict_from_url_loads_the_scanned_bytes(
        hub: FakeHub, policy_file: Path, checkpoint: bytes, tmp_path: Path) -> None:
    import torch

    digest = hashlib.sha256(checkpoint).hexdigest()
    url = hub.add_file(f"/models/net-{digest[:8]}.pt", checkpoint)
    state = safehub.load_state_dict_from_url(url, check_hash=True, policy=policy_file)
    assert torch.equal(state["weight"], torch.arange(6.0).reshape(2, 3))
    cached = Path(safehub.get_dir()) / "safehub" / "files"
    assert cached.is_dir() and str(tmp_path) in str(cached), "the cache is under TORCH_HOME"
    again = safehub.load_state_dict_from_url(url, check_hash=True, policy=policy_file)
    assert torch.equal(again["bias"], torch.ones(3)) and hub.count("/models/") == 1
    model_dir = tmp_path / "models"
    safehub.load_state_dict_from_url(url, model_dir=str(model_dir), policy=policy_file)
    assert (model_dir / "safehub" / "files").is_dir()


def test_weights_only_false_is_refused(hub: FakeHub, policy_file: Path,
                                       checkpoint: bytes) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    with pytest.raises(PolicyViolation) as err:
        safehub.load_state_dict_from_url(url, weights_only=False, policy=policy_file)
    assert "weights_only=False" in err.value.message
    assert hub.count() == 0


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_runs_in_torch_hub_and_not_in_safehub(
        hub: FakeHub, policy_file: Path, marker_dir: Path, tmp_path: Path) -> None:
    marker = marker_dir / "pwned"
    url = hub.add_file("/models/evil.pt", pickle.dumps({"state": _Payload(marker)}))
    # Without safehub: torch.hub with its default weights_only=False runs the payload.
    script = textwrap.dedent("""
        import sys, torch.hub
        torch.hub.set_dir(sys.argv[2])
        try:
            torch.hub.load_state_dict_from_url(sys.argv[1], progress=False)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    subprocess.run([sys.executable, "-c", script, url, str(tmp_path / "torchhub")],
                   check=True, capture_output=True, timeout=120)
    assert marker.exists(), "torch.hub executed the pickle"
    marker.unlink()
    with pytest.raises(PolicyViolation) as err:
        safehub.load_state_dict_from_url(url, policy=policy_file)
    assert "SH100" in err.value.diagnostics()
    assert not marker.exists()


def test_allowed_global_is_passed_to_the_weights_only_loader(
        tmp_path: Path, hub: FakeHub, checkpoint: bytes) -> None:
    import fractions

    import torch

    from tests.fetch.helpers import torch_bytes, write_policy

    url = hub.add_file("/models/args.pt", torch_bytes(
        {"weight": torch.ones(2), "args": fractions.Fraction(1, 10)}))
    plain = write_policy(tmp_path / "plain.toml", hub)
    with pytest.raises(PolicyViolation):
        safehub.load_state_dict_from_url(url, policy=plain)
    allowing = write_policy(tmp_path / "allow.toml", hub,
                            body='[scanner]\nallowed_globals = ["fractions.Fraction"]\n')
    state = safehub.load_state_dict_from_url(url, policy=allowing)
    assert state["args"] == fractions.Fraction(1, 10)
    registered = [g[0] if isinstance(g, tuple) else g
                  for g in torch.serialization.get_safe_globals()]
    assert fractions.Fraction not in registered, "allowed for that call only"


def test_download_url_to_file_verifies_before_writing_dst(
        hub: FakeHub, policy_file: Path, checkpoint: bytes, tmp_path: Path) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    dst = tmp_path / "out" / "net.pt"
    dst.parent.mkdir()
    dst.write_bytes(b"previous")
    with pytest.raises(IntegrityError):
        safehub.download_url_to_file(url, str(dst), hash_prefix="0000", policy=policy_file)
    assert dst.read_bytes() == b"previous", "dst untouched on failure"
    digest = hashlib.sha256(checkpoint).hexdigest()
    safehub.download_url_to_file(url, str(dst), hash_prefix=digest[:10], progress=False,
                                 policy=policy_file)
    assert dst.read_bytes() == checkpoint
    assert sorted(p.name for p in dst.parent.iterdir()) == ["net.pt"], "no .partial left"


def test_progress_callable_receives_byte_counts(
        hub: FakeHub, policy_file: Path, big_checkpoint: bytes, tmp_path: Path) -> None:
    from safehub.fetch import Progress

    seen: list[Progress] = []
    url = hub.add_file("/models/big.pt", big_checkpoint)
    safehub.download_url_to_file(url, str(tmp_path / "big.pt"), progress=seen.append,
                                 policy=policy_file)
    assert seen and seen[-1].done == seen[-1].total == len(big_checkpoint)
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def test_download_url_to_file_never_replaces_a_special_file(
        hub: FakeHub, policy_file: Path, checkpoint: bytes, tmp_path: Path) -> None:
    # torch.hub renames the download onto dst: as root, dst=/dev/null replaced the
    # system's device node with the file. The test's own nodes stand in for it.
    import stat

    url = hub.add_file("/models/net.pt", checkpoint)
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    fifo = nodes / "fifo"
    os.mkfifo(fifo)
    targets = [fifo, nodes / "folder"]
    targets[1].mkdir()
    try:
        os.mknod(nodes / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        targets.append(nodes / "null")
    except OSError:  # not root: no device could be replaced either
        pass
    before = {p: os.lstat(p).st_mode for p in targets}
    for target in targets:
        with pytest.raises(safehub.errors.SafehubError, match="download destination"):
            safehub.download_url_to_file(url, str(target), progress=False, policy=policy_file)
    assert {p: os.lstat(p).st_mode for p in targets} == before
    assert sorted(p.name for p in nodes.iterdir()) == sorted(p.name for p in targets), (
        "no .partial left")


def test_load_state_dict_from_url_validates_sparse_tensors(
        hub: FakeHub, policy_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The scan checks a sparse tensor's index data; the load then runs torch's own check
    # at its end (check_sparse_tensor_invariants on), watched here through torch's hook.
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse compressed support is in beta
        torch.save({"coo": torch.eye(3).to_sparse(), "csr": torch.eye(3).to_sparse_csr()},
                   buffer)
    url = hub.add_file("/models/sparse.pt", buffer.getvalue())
    seen: list[tuple[bool, int]] = []
    validate = torch._utils._validate_loaded_sparse_tensors

    def watched() -> None:
        seen.append((torch.sparse.check_sparse_tensor_invariants.is_enabled(),
                     len(torch._utils._sparse_tensors_to_validate)))
        validate()

    monkeypatch.setattr(torch._utils, "_validate_loaded_sparse_tensors", watched)
    state = safehub.load_state_dict_from_url(url, policy=policy_file)
    assert all(t.to_dense().equal(torch.eye(3)) for t in state.values())
    assert seen == [(True, 2)] and not torch.sparse.check_sparse_tensor_invariants.is_enabled()
