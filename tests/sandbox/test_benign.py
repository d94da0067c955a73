"""Benign repos load through the sandbox with exactly the weights torch.hub gives."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from safehub.errors import PolicyViolation
from safehub.sandbox import (
    ALL_LAYERS,
    Layer,
    Operation,
    RepoCodeError,
    Sandbox,
    SandboxLimits,
    SandboxRequest,
    UnknownEntrypoint,
    run_sandboxed,
)
from tests.sandbox.conftest import FAST, PlainHub, TestBroker, assert_same_tensors, make_repo

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")

MODELS = """
    import os, torch, torch.nn as nn

    dependencies = ["torch"]

    def linear(in_features=8, out_features=4, bias=True):
        '''A seeded linear layer.'''
        torch.manual_seed(0)
        return nn.Linear(in_features, out_features, bias=bias)

    def convnet(width, *, depth=2, scale=1.0):
        torch.manual_seed(1)
        layers = [nn.Conv2d(3, width, 3)]
        for _ in range(depth - 1):
            layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3)]
        model = nn.Sequential(*layers)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        return model

    def shipped():
        model = nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8))
        here = os.path.dirname(os.path.abspath(__file__))
        state = torch.load(os.path.join(here, "weights", "model.pt"), weights_only=True)
        model.load_state_dict(state)
        return model

    def zoo():
        torch.manual_seed(2)
        base = torch.randn(6, 5)
        tied = torch.randn(4, 3)
        return {
            "f32": base, "f16": base.half(), "bf16": base.bfloat16(), "f64": base.double(),
            "i64": torch.arange(10), "i32": torch.arange(7, dtype=torch.int32),
            "i16": torch.arange(3, dtype=torch.int16), "i8": torch.arange(-3, 3, dtype=torch.int8),
            "u8": torch.arange(9, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
            "transposed": base.t(), "sliced": base[::2, 1:],
            "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
            "tied_a": tied, "tied_b": tied, "view_of_tied": tied[1],
            "c64": torch.complex(base[0], base[1]),
            "f8": base.to(torch.float8_e4m3fn),
        }

    def from_url(url, file_name=None):
        model = nn.Linear(4, 2)
        state = torch.hub.load_state_dict_from_url(url, file_name=file_name, progress=False)
        model.load_state_dict(state)
        return model

    def to_file(url, hash_prefix=None):
        path = os.path.join(torch.hub.get_dir(), "downloaded.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(url, path, hash_prefix=hash_prefix, progress=False)
        return torch.load(path, weights_only=True)

    def nested(repo):
        return torch.hub.load(repo, "linear", out_features=3, trust_repo=True)

    def refused_but_caught(url):
        try:
            torch.hub.load_state_dict_from_url(url)
        except Exception:
            pass
        return linear()
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    root = tmp_path_factory.mktemp("benign") / "repo"
    make_repo(root, MODELS)
    torch.manual_seed(3)
    shipped = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8))
    (root / "weights").mkdir()
    torch.save(shipped.state_dict(), root / "weights" / "model.pt")
    return root


def load(sandbox: Sandbox, repo: Path, entry: str, *args: object, broker: object = None,
         **kwargs: object):  # type: ignore[no-untyped-def]
    request = SandboxRequest.for_load(repo, entry, args, kwargs, limits=FAST,  # type: ignore[arg-type]
                                      required_layers=ALL_LAYERS)
    return sandbox.run(request, broker)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry, args, kwargs", [
    ("linear", [], {}),
    ("linear", [], {"in_features": 5, "out_features": 2, "bias": False}),
    ("convnet", [6], {"depth": 3, "scale": 0.5}),
    ("shipped", [], {}),
    ("zoo", [], {}),
])
def test_loads_exactly_what_torch_hub_loads(entry: str, args: list[object],
                                            kwargs: dict[str, object], repo: Path,
                                            sandbox: Sandbox, plain_hub: PlainHub) -> None:
    plain = plain_hub.run("load", repo, entry, kwargs=kwargs) if not args else None
    if args:  # the runner passes kwargs only: name the positional one
        plain = plain_hub.run("load", repo, entry, kwargs={"width": args[0], **kwargs})
    assert plain is not None and plain.ok, plain
    result = load(sandbox, repo, entry, *args, **kwargs)
    assert_same_tensors(result.tensors, plain.tensors)
    assert set(result.layers_applied) == set(Layer) and not result.layers_missing
    assert {"spawn_s", "setup_s", "run_s", "receive_s", "total_s"} <= set(result.timings)


def test_state_dict_order_and_aliasing_are_reported(repo: Path, sandbox: Sandbox) -> None:
    result = load(sandbox, repo, "zoo")
    assert list(result.tensors)[:3] == ["f32", "f16", "bf16"]
    assert ("tied_a", "tied_b", "view_of_tied") in result.aliased
    # Each tensor has its own memory now: writing one leaves its former alias alone.
    result.tensors["tied_a"].zero_()
    assert result.tensors["tied_b"].abs().sum() > 0


def test_download_through_the_broker(repo: Path, sandbox: Sandbox, plain_hub: PlainHub,
                                     http_root: tuple[Path, str], tmp_path: Path) -> None:
    import torch

    www, base = http_root
    torch.manual_seed(4)
    torch.save(torch.nn.Linear(4, 2).state_dict(), www / "linear-abc123.pt")
    url = base + "linear-abc123.pt"
    plain = plain_hub.run("load", repo, "from_url", kwargs={"url": url})
    assert plain.ok, plain.result

    broker = TestBroker(tmp_path / "cache", base)
    result = load(sandbox, repo, "from_url", url, broker=broker)
    assert_same_tensors(result.tensors, plain.tensors)
    assert broker.calls == [url] and result.fetched == (url,)


def test_download_url_to_file_checks_its_hash(repo: Path, sandbox: Sandbox, tmp_path: Path,
                                              http_root: tuple[Path, str]) -> None:
    import torch

    www, base = http_root
    torch.save({"w": torch.arange(3.0)}, www / "w.pt")
    digest = hashlib.sha256((www / "w.pt").read_bytes()).hexdigest()
    broker = TestBroker(tmp_path / "cache", base)
    result = load(sandbox, repo, "to_file", base + "w.pt", digest[:8], broker=broker)
    assert result.tensors["w"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(RepoCodeError, match="invalid hash value"):
        load(sandbox, repo, "to_file", base + "w.pt", "00000000", broker=broker)


def test_broker_refusal_is_the_brokers_own_error(repo: Path, sandbox: Sandbox,
                                                 tmp_path: Path) -> None:
    broker = TestBroker(tmp_path / "cache", "http://127.0.0.1:1/")
    with pytest.raises(PolicyViolation, match="download not allowed") as info:
        load(sandbox, repo, "from_url", "https://example.com/evil.pt", broker=broker)
    assert info.value.fix and "allowed_urls" in info.value.fix
    # Code that catches the refusal and carries on is fine.
    assert load(sandbox, repo, "refused_but_caught", "https://example.com/evil.pt",
                broker=broker).tensors


def test_without_a_broker_downloads_are_refused(repo: Path, sandbox: Sandbox) -> None:
    with pytest.raises(PolicyViolation, match="no broker"):
        load(sandbox, repo, "from_url", "https://example.com/model.pt")


def test_nested_hub_load_goes_through_the_broker(repo: Path, sandbox: Sandbox,
                                                 tmp_path: Path) -> None:
    broker = TestBroker(tmp_path / "cache", "", repos={"acme/models:v1": repo})
    result = load(sandbox, repo, "nested", "acme/models:v1", broker=broker)
    assert result.tensors["weight"].shape == (3, 8)
    assert broker.calls == ["acme/models:v1"]
    with pytest.raises(PolicyViolation, match="repo not allowed"):
        load(sandbox, repo, "nested", "evil/repo", broker=broker)


def test_arguments_must_be_json(repo: Path) -> None:
    with pytest.raises(TypeError, match="not a JSON value"):
        SandboxRequest.for_load(repo, "linear", kwargs={"x": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="finite"):
        SandboxRequest.for_load(repo, "linear", [float("nan")])
    with pytest.raises(ValueError, match="entrypoint"):
        SandboxRequest(repo, Operation.LOAD)
    with pytest.raises(ValueError, match="both required and skipped"):
        SandboxRequest.for_list(repo, required_layers={Layer.SECCOMP},
                                unsafe_skip_layers={Layer.SECCOMP})


def test_limits_validate_and_tighten() -> None:
    limits = SandboxLimits(timeout_s=100, memory_mb=4096)
    tight = limits.tightened(timeout_s=500, memory_mb=1024, cpu_s=None)
    assert (tight.timeout_s, tight.memory_mb, tight.cpu_s) == (100, 1024, limits.cpu_s)
    with pytest.raises(ValueError):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError):
        SandboxLimits(timeout_s=float("inf"))


def test_entrypoint_errors_are_reported_with_the_traceback(repo: Path, sandbox: Sandbox) -> None:
    with pytest.raises(UnknownEntrypoint, match=r"Cannot find callable nope in hubconf; its "
                       r"entrypoints are: .*linear") as unknown:
        load(sandbox, repo, "nope")
    assert unknown.value.rule_id == "SH520" and "traceback" not in unknown.value.diagnostics()
    with pytest.raises(RepoCodeError, match="TypeError") as info:
        load(sandbox, repo, "linear", unknown=1)
    assert "unexpected keyword argument" in info.value.diagnostics()


def test_module_level_convenience(repo: Path) -> None:
    result = run_sandboxed(SandboxRequest.for_list(repo, limits=FAST))
    assert "linear" in result.entrypoints and "zoo" in result.entrypoints


def test_the_child_runs_the_parents_own_safehub(tmp_path: Path, sandbox: Sandbox) -> None:
    # The zygote imports safehub from the folder this process imported it from, even when
    # another copy (an installed release, an editable install of another checkout) comes
    # earlier on the path: the layers the child applies are the ones this code expects.
    import safehub

    repo = make_repo(tmp_path / "repo", """
        import sys, torch
        def where():
            path = sys.modules["safehub"].__file__.encode()
            return {"path": torch.frombuffer(bytearray(path), dtype=torch.uint8)}
    """)
    tensors = sandbox.run(SandboxRequest.for_load(repo, "where", limits=FAST)).tensors
    assert bytes(tensors["path"].tolist()).decode() == str(Path(safehub.__file__).resolve())
