"""Return shapes, seed, help, unknown entrypoints and nested loads, compared with what
plain torch.hub does in a throwaway process (the oracle)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import safehub
from safehub.errors import PolicyViolation
from safehub.sandbox import UnknownEntrypoint
from tests.conftest import CliResult
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import write_policy

Cli = Callable[..., CliResult]

HUBCONF = textwrap.dedent('''
    """Entrypoints returning what real hubconfs return."""
    dependencies = ["torch"]
    import torch


    def net(width=3):
        """Random init, as pretrained=False entrypoints are."""
        return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(),
                                   torch.nn.Linear(width, 2))


    def nodoc():
        return torch.nn.Linear(2, 2)


    def vad():
        # silero-vad's shape: a TorchScript model and a tuple of helper functions.
        model = torch.jit.script(torch.nn.Linear(3, 1))
        def get_speech_timestamps(audio):
            return []
        return model, (get_speech_timestamps, print)


    def models():
        return [torch.nn.Linear(2, 2), torch.nn.Conv2d(1, 2, 3)]


    def mixed():
        return {"backbone": torch.nn.Linear(2, 3), "scale": torch.full((2,), 0.5),
                "classes": ["cat", "dog"], "transform": (lambda x: x)}


    def colliding():
        return {"a": torch.nn.Linear(1, 1), "a.weight": torch.ones(1)}
''')

NESTED = textwrap.dedent('''
    import torch


    def outer():
        inner = torch.hub.load("acme2/inner", "linear")
        return {"inner": inner, "own": torch.zeros(1)}
''')

INNER = b'''
import torch


def linear():
    return torch.nn.Linear(2, 1)
'''


def make_repo(root: Path, hubconf: str = HUBCONF) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hubconf.py").write_text(hubconf)
    return root


def torch_hub(repo: Path, entry: str, seed: int | None, out: Path) -> dict[str, torch.Tensor]:
    """torch.manual_seed(seed); torch.hub.load(...) in a throwaway process: its state dict."""
    code = textwrap.dedent(f"""
        import torch
        from safetensors.torch import save_file
        if {seed!r} is not None:
            torch.manual_seed({seed!r})
        m = torch.hub.load({str(repo)!r}, {entry!r}, source="local", trust_repo=True)
        save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {str(out)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return load_file(out)


def torch_hub_help(repo: Path, entry: str) -> str | None:
    # torch.hub.help takes no source='local': its own steps (import, entry, __doc__).
    code = textwrap.dedent(f"""
        import json, os, torch.hub as h
        m = h._import_module(h.MODULE_HUBCONF, os.path.join({str(repo)!r}, h.MODULE_HUBCONF))
        print(json.dumps(h._load_entry_from_hubconf(m, {entry!r}).__doc__))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_seed_gives_torch_hubs_random_init(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    want = torch_hub(repo, "net", 11, tmp_path / "t.safetensors")
    got = safehub.load(str(repo), "net", source="local", seed=11)
    assert same(got, want)
    assert not same(safehub.load(str(repo), "net", source="local", seed=12), want)


def test_cli_seed(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    want = torch_hub(repo, "net", 5, tmp_path / "t.safetensors")
    out = tmp_path / "o.safetensors"
    result = cli("load", repo, "net", "--source", "local", "--seed", "5", "--out", out)
    assert result.code == 0, result.err
    assert same(load_file(out), want)
    assert cli("load", repo, "net", "--source", "local", "--seed", "-1", "--out", out).code == 2


def test_help_without_docstring_is_none_as_torch_hub(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert torch_hub_help(repo, "nodoc") is None
    assert safehub.help(str(repo), "nodoc", source="local") is None
    assert safehub.help(str(repo), "net", source="local") == torch_hub_help(repo, "net")


def test_unknown_entrypoint_is_one_line_naming_the_entrypoints(tmp_path: Path,
                                                                cli: Cli) -> None:
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(UnknownEntrypoint) as info:
        safehub.load(str(repo), "resnet", source="local")
    assert info.value.message.startswith("Cannot find callable resnet in hubconf")
    assert info.value.entrypoints == ["colliding", "mixed", "models", "net", "nodoc", "vad"]
    assert info.value.rule_id == "SH520"
    for command in (("load", repo, "resnet", "--out", tmp_path / "o.safetensors"),
                    ("help", repo, "resnet")):
        result = cli(*command, "--source", "local")
        assert result.code == 1
        assert "Traceback" not in result.err
        assert "Cannot find callable resnet in hubconf; its entrypoints are: colliding, " \
               "mixed, models, net, nodoc, vad" in result.err


def test_tuple_with_torchscript_and_functions(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    state = safehub.load(str(repo), "vad", source="local", seed=1)
    assert sorted(state) == ["0.bias", "0.weight"]
    assert state.shape.kind == "tuple"
    model_node = state.shape.children[0]
    assert model_node.kind == "module" and model_node.script
    dropped = [(n.prefix, n.reason) for n in state.dropped]
    assert [p for p, _ in dropped] == ["1.0", "1.1"]
    assert all("code cannot leave the sandbox" in why for _, why in dropped)

    torch.manual_seed(1)
    expected = torch.jit.script(torch.nn.Linear(3, 1)).state_dict()
    model = torch.nn.Linear(3, 1)
    filled = safehub.load(str(repo), "vad", source="local", seed=1, into=(model, None))
    assert filled[0] is model and filled[1] == (None, None)
    assert torch.equal(model.weight, expected["weight"])


def test_list_and_dict_results_fill_matching_structures(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    state = safehub.load(str(repo), "models", source="local")
    assert sorted(state) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    a, b = torch.nn.Linear(2, 2), torch.nn.Conv2d(1, 2, 3)
    assert safehub.load(str(repo), "models", source="local", into=[a, b]) == [a, b]
    assert torch.equal(b.weight, state["1.weight"])

    mixed = safehub.load(str(repo), "mixed", source="local")
    assert sorted(mixed) == ["backbone.bias", "backbone.weight", "scale"]
    nodes = {n.prefix: n for n in mixed.shape.walk()}
    assert nodes["classes.1"].value == "dog"
    assert nodes["transform"].kind == "dropped"
    head = torch.nn.Linear(2, 3)
    filled = safehub.load(str(repo), "mixed", source="local",
                          into={"backbone": head, "scale": None, "classes": None})
    assert filled["backbone"] is head and filled["classes"] == ["cat", "dog"]
    assert filled["scale"].tolist() == [0.5, 0.5]
    with pytest.raises(TypeError, match="does not match"):
        safehub.load(str(repo), "models", source="local", into=(a,))


def test_colliding_keys_are_refused(tmp_path: Path) -> None:
    from safehub.sandbox import BadResult

    repo = make_repo(tmp_path / "repo")
    with pytest.raises(BadResult, match="collide"):
        safehub.load(str(repo), "colliding", source="local")


def test_nested_load_needs_explicit_trust_for_the_call(tmp_path: Path, hub: FakeHub,
                                                       cli: Cli) -> None:
    hub.add_repo("acme2/inner", {"hubconf.py": INNER})
    policy = write_policy(tmp_path / "policy.toml", hub)
    repo = make_repo(tmp_path / "outer", NESTED)
    with pytest.raises(PolicyViolation) as info:
        safehub.load(str(repo), "outer", source="local", policy=str(policy))
    fix = info.value.fix or ""
    assert '[repos."acme2/inner"]' in fix and "--trust-nested acme2/inner" in fix
    assert "--trust-repo" not in fix  # the outer repo's flag does not help here
    assert "torch.hub.load" in info.value.message

    state = safehub.load(str(repo), "outer", source="local", policy=str(policy),
                         trust_nested=["ACME2/Inner"])
    assert sorted(state) == ["inner.bias", "inner.weight", "own"]
    out = tmp_path / "o.safetensors"
    denied = cli("load", repo, "outer", "--source", "local", "--policy", policy, "--out", out)
    assert denied.code == 1 and "--trust-nested acme2/inner" in denied.err
    allowed = cli("load", repo, "outer", "--source", "local", "--policy", policy, "--out", out,
                  "--trust-nested", "acme2/inner")
    assert allowed.code == 0, allowed.err
    # Trust for one call only: the next call without the flag is refused again.
    with pytest.raises(PolicyViolation):
        safehub.load(str(repo), "outer", source="local", policy=str(policy))


COPIED = textwrap.dedent('''
    import os
    import torch


    def copies():
        """How many repository copies the parent made for this call (beside this one)."""
        grants = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return {"copies": torch.tensor([len(os.listdir(grants))])}


    def again(n):
        for _ in range(n):
            last = torch.hub.load("acme/big:main", "copies")
        return last
''')


def test_nested_loads_are_copied_once_and_within_the_file_limit(tmp_path: Path,
                                                                  hub: FakeHub) -> None:
    # The parent copies each nested repository for the child, outside the sandbox's
    # limits: loading one repository again and again wrote a copy each time (256 loads of
    # a 2 GiB tree, 512 GiB on the host's disk, under a 4 GiB file limit).
    from safehub.sandbox import LimitExceeded

    blob = random.Random(0).randbytes(4 << 20)  # 4 MiB that a zip does not shrink
    hub.add_repo("acme/big", {"hubconf.py": COPIED.encode(), "blob.bin": blob})
    policy = write_policy(tmp_path / "policy.toml", hub)
    state = safehub.load("acme/big:main", "again", policy=str(policy), n=6)
    assert state["copies"].tolist() == [1]

    small = write_policy(tmp_path / "small.toml", hub, body="[sandbox]\nmax_file_mb = 2\n")
    with pytest.raises(LimitExceeded) as info:
        safehub.load("acme/big:main", "again", policy=str(small), n=1)
    assert info.value.limit == "file size" and "max_file_mb" in (info.value.fix or "")


def test_loopback_http_refusal_names_allow_url_and_the_policy_key(tmp_path: Path, hub: FakeHub,
                                                                  cli: Cli) -> None:
    from tests.fetch.helpers import torch_bytes

    url = hub.add_file("/w/linear.pth", torch_bytes({"weight": torch.ones(2, 4),
                                                     "bias": torch.zeros(2)}))
    repo = make_repo(tmp_path / "repo", HUBCONF + textwrap.dedent('''

        def from_url(url):
            model = torch.nn.Linear(4, 2)
            model.load_state_dict(torch.hub.load_state_dict_from_url(url, progress=False))
            return model
    '''))
    with pytest.raises(PolicyViolation) as info:
        safehub.load(str(repo), "from_url", url, source="local", policy="default")
    fix = info.value.fix or ""
    assert f"--allow-url {hub.url}/w/" in fix
    assert "downloads.allow_http_loopback = true" in fix and "downloads.allowed_urls" in fix
    denied = cli("load", repo, "from_url", f"url={url}", "--source", "local",
                 "--out", tmp_path / "o.safetensors")
    assert denied.code == 1 and f"--allow-url {hub.url}/w/" in denied.err


def test_no_network_fails_at_once_naming_the_offline_setting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from safehub.errors import FetchError

    hub = FakeHub("127.0.0.1")
    policy = write_policy(tmp_path / "policy.toml", hub)
    url = f"{hub.url}/w/linear.pth"
    hub.close()  # nothing listens there now: the connection is refused
    with caplog.at_level(logging.INFO, logger="safehub"), \
            pytest.raises(FetchError) as info:
        safehub.load_state_dict_from_url(url, policy=str(policy), progress=False)
    assert "no network" in info.value.message
    assert "SAFEHUB_OFFLINE=1" in (info.value.fix or "")
    assert "downloads.offline" in (info.value.fix or "")
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], \
        "a refused connection was retried"
