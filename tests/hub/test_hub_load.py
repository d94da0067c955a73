"""safehub.load/list/help and the `safehub load|list|help` CLI: policy -> fetch -> verify ->
sandbox, end to end, against real repos on disk and a real loopback GitHub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import safehub
from safehub.errors import IntegrityError, PolicyViolation, SandboxError
from tests.conftest import CliResult
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import torch_bytes, write_policy

Cli = Callable[..., CliResult]

HUBCONF = textwrap.dedent('''
    """A small test repository."""
    dependencies = ["torch"]
    import torch


    def linear(out_features=3, init_seed=0):
        """A linear layer with seeded weights."""
        torch.manual_seed(init_seed)
        return torch.nn.Linear(4, out_features)


    def from_url(url):
        """Weights downloaded the torch.hub way."""
        model = torch.nn.Linear(4, 2)
        model.load_state_dict(torch.hub.load_state_dict_from_url(url, progress=False))
        return model
''')


def make_repo(root: Path, hubconf: str = HUBCONF) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hubconf.py").write_text(hubconf)
    return root


def torch_hub_state(repo: Path, entry: str, kwargs: dict[str, object], out: Path) -> dict[str,
                                                                                         torch.Tensor]:
    """What plain torch.hub.load returns, computed in a throwaway process."""
    code = (f"import torch, json\nm = torch.hub.load({str(repo)!r}, {entry!r}, source='local', "
            f"trust_repo=True, **json.loads({json.dumps(json.dumps(kwargs))}))\n"
            f"from safetensors.torch import save_file\n"
            f"save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {str(out)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return load_file(out)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_local_load_gives_torch_hubs_exact_weights(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    got = safehub.load(str(repo), "linear", source="local", out_features=5, init_seed=3)
    expected = torch_hub_state(repo, "linear", {"out_features": 5, "init_seed": 3},
                               tmp_path / "torch.safetensors")
    assert same(got, expected)


def test_into_loads_a_module_built_from_trusted_code(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    module = torch.nn.Linear(4, 3)
    returned = safehub.load(str(repo), "linear", source="local", into=module)
    assert returned is module
    assert torch.equal(module.weight, safehub.load(str(repo), "linear", source="local")["weight"])


def test_arguments_must_be_json_values(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(TypeError, match="not a JSON value"):
        safehub.load(str(repo), "linear", source="local", init_seed=object())


def test_list_and_help_of_a_local_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert safehub.list(str(repo), source="local") == ["from_url", "linear"]
    assert "seeded weights" in safehub.help(str(repo), "linear", source="local")


def test_github_repo_through_the_fetch_layer(tmp_path: Path, hub: FakeHub) -> None:
    sha = hub.add_repo("acme/net", {"hubconf.py": HUBCONF.encode()})
    policy = write_policy(tmp_path / "policy.toml", hub)
    tensors = hub_load("acme/net:main", "linear", policy, out_features=2)
    assert tensors["weight"].shape == (2, 4)
    assert hub_list("acme/net", policy) == ["from_url", "linear"]
    assert hub.count(f"/api/repos/acme/net/zipball/{sha}") + hub.count("/codeload") >= 1


def hub_load(repo: str, entry: str, policy: Path, **kwargs: object) -> dict[str, torch.Tensor]:
    return safehub.load(repo, entry, policy=str(policy), **kwargs)  # type: ignore[no-any-return]


def hub_list(repo: str, policy: Path) -> list[str]:
    return safehub.list(repo, policy=str(policy))  # type: ignore[no-any-return]


def test_untrusted_repo_is_denied_before_any_request(tmp_path: Path, hub: FakeHub) -> None:
    hub.add_repo("mallory/net", {"hubconf.py": HUBCONF.encode()})
    policy = write_policy(tmp_path / "policy.toml", hub)
    with pytest.raises(PolicyViolation, match="not trusted"):
        hub_load("mallory/net", "linear", policy)
    assert hub.count("/") == 0


def test_weights_the_code_downloads_go_through_the_broker(tmp_path: Path, hub: FakeHub) -> None:
    weights = {"weight": torch.arange(8.0).reshape(2, 4), "bias": torch.tensor([1.0, -1.0])}
    url = hub.add_file("/models/linear-2x4.pth", torch_bytes(weights))
    repo = make_repo(tmp_path / "repo")
    policy = write_policy(tmp_path / "policy.toml", hub)
    got = safehub.load(str(repo), "from_url", url, source="local", policy=str(policy))
    assert same(got, weights)
    assert hub.count("/models/linear-2x4.pth") == 1


def test_broker_refuses_a_download_outside_the_policy(tmp_path: Path, hub: FakeHub) -> None:
    url = hub.add_file("/models/w.pth", torch_bytes({"weight": torch.zeros(2, 4),
                                                     "bias": torch.zeros(2)}))
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(PolicyViolation, match="http"):
        safehub.load(str(repo), "from_url", url, source="local", policy="default")
    assert hub.count("/models/w.pth") == 0, "the refused URL was never contacted"


def test_broker_refuses_a_malicious_download(tmp_path: Path, hub: FakeHub,
                                             marker_dir: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker_dir}/fired",)

    url = hub.add_file("/models/evil.pth", torch_bytes({"weight": Payload()}))
    repo = make_repo(tmp_path / "repo")
    policy = write_policy(tmp_path / "policy.toml", hub)
    with pytest.raises(Exception, match=r"posix\.system|os\.system"):
        safehub.load(str(repo), "from_url", url, source="local", policy=str(policy))
    assert not (marker_dir / "fired").exists()


def _signed_policy(tmp_path: Path, hub: FakeHub) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "signer.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public = tmp_path / "signer.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = write_policy(tmp_path / "policy.toml", hub, body=(
        '[[signatures]]\nscope = "acme/*"\npublic_keys = ["signer.pub"]\n'))
    return policy, private


def _repo_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_required_signature_is_verified_on_the_fetched_tree(tmp_path: Path,
                                                            hub: FakeHub) -> None:
    from safehub.signing import sign

    policy, private = _signed_policy(tmp_path, hub)
    src = make_repo(tmp_path / "src")
    hub.add_repo("acme/unsigned", _repo_files(src))
    with pytest.raises(IntegrityError, match="not signed"):
        hub_load("acme/unsigned", "linear", policy)
    sign(src, private_key=private)
    hub.add_repo("acme/signed", _repo_files(src))
    assert hub_load("acme/signed", "linear", policy)["weight"].shape == (3, 4)
    files = _repo_files(src)
    files["hubconf.py"] += b"\nimport os  # tampered after signing\n"
    hub.add_repo("acme/tampered", files)
    with pytest.raises(IntegrityError):
        hub_load("acme/tampered", "linear", policy)


def test_required_layer_missing_refuses_to_run(tmp_path: Path) -> None:
    from safehub.sandbox import probe_layers

    missing = [layer.value for layer, status in probe_layers().items() if not status.available]
    if not missing:
        pytest.skip("every isolation layer is available on this machine")
    policy = tmp_path / "p.toml"
    policy.write_text(f'schema = 1\nextends = "default"\n[sandbox]\n'
                      f'required_layers = ["{missing[0]}"]\n')
    with pytest.raises(PolicyViolation, match=missing[0]):
        safehub.load(str(make_repo(tmp_path / "repo")), "linear", source="local",
                 policy=str(policy))


# --- the CLI contract ----------------------------------------------------------------------


def test_cli_load_local(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = tmp_path / "out.safetensors"
    result = cli("load", repo, "linear", "out_features=4", "init_seed=7", "--source", "local",
                 "--out", out)
    assert result.code == 0, result.err
    assert result.out == ""
    expected = torch_hub_state(repo, "linear", {"out_features": 4, "init_seed": 7},
                               tmp_path / "torch.safetensors")
    assert same(load_file(out), expected)


def test_cli_list_and_help(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert cli("list", repo, "--source", "local").out == "from_url\nlinear\n"
    listed = json.loads(cli("list", repo, "--source", "local", "-f", "json").out)
    assert listed["entrypoints"] == ["from_url", "linear"]
    assert "seeded weights" in cli("help", repo, "linear", "--source", "local").out


def test_cli_bad_arguments_exit_2(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = tmp_path / "o.safetensors"
    assert cli("load", repo, "linear", "noequals", "--source", "local", "--out", out).code == 2
    assert cli("load", repo, "linear", "--source", "local", "--out", out,
               "--timeout", "-1").code == 2
    assert cli("load", tmp_path / "nowhere", "linear", "--source", "local",
               "--out", out).code == 2
    assert not out.exists()


def test_cli_policy_refusal_exits_1(cli: Cli, tmp_path: Path, hub: FakeHub) -> None:
    hub.add_repo("mallory/net", {"hubconf.py": HUBCONF.encode()})
    policy = write_policy(tmp_path / "policy.toml", hub)
    out = tmp_path / "o.safetensors"
    result = cli("load", "mallory/net", "linear", "--policy", policy, "--out", out)
    assert result.code == 1
    assert "not trusted" in result.err
    assert not out.exists()


def test_cli_trust_repo_trusts_for_one_call(cli: Cli, tmp_path: Path, hub: FakeHub) -> None:
    hub.add_repo("someone/net", {"hubconf.py": HUBCONF.encode()})
    policy = write_policy(tmp_path / "policy.toml", hub)
    out = tmp_path / "o.safetensors"
    assert cli("load", "someone/net", "linear", "--policy", policy, "--out", out).code == 1
    assert cli("load", "someone/net", "linear", "--policy", policy, "--out", out,
               "--trust-repo").code == 0


def test_cli_timeout_only_tightens(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", HUBCONF + "\n\ndef slow():\n    import time\n"
                     "    time.sleep(60)\n    return {}\n")
    out = tmp_path / "o.safetensors"
    result = cli("load", repo, "slow", "--source", "local", "--out", out, "--timeout", "1")
    assert result.code == 1
    assert "timeout" in result.err.lower()
    policy = tmp_path / "p.toml"
    policy.write_text('schema = 1\nextends = "default"\n[sandbox]\ntimeout_s = 1\n')
    result = cli("load", repo, "slow", "--source", "local", "--out", out, "--timeout", "600",
                 "--policy", policy)
    assert result.code == 1, "--timeout cannot raise the policy's limit"


def test_cli_allow_url_for_one_run(cli: Cli, tmp_path: Path, hub: FakeHub) -> None:
    weights = {"weight": torch.ones(2, 4), "bias": torch.zeros(2)}
    url = hub.add_file("/w/linear.pth", torch_bytes(weights))
    repo = make_repo(tmp_path / "repo")
    out = tmp_path / "o.safetensors"
    denied = cli("load", repo, "from_url", f"url={url}", "--source", "local", "--out", out)
    assert denied.code == 1
    allowed = cli("load", repo, "from_url", f"url={url}", "--source", "local", "--out", out,
                  "--allow-url", f"{hub.url}/w/")
    assert allowed.code == 0, allowed.err
    assert same(load_file(out), weights)
    bad = cli("load", repo, "from_url", f"url={url}", "--source", "local", "--out", out,
              "--allow-url", "http://example.com/")
    assert bad.code == 2


def test_cli_hostile_repo_is_contained(cli: Cli, tmp_path: Path, marker_dir: Path) -> None:
    hostile = HUBCONF + textwrap.dedent(f'''

        import os
        os.system("touch {marker_dir}/imported")


        def steal():
            """Returns the model, and tries to run a command."""
            os.system("touch {marker_dir}/called")
            return linear()
    ''')
    repo = make_repo(tmp_path / "repo", hostile)
    # Without safehub, plain torch.hub runs both commands.
    subprocess.run([sys.executable, "-c", f"import torch; torch.hub.load({str(repo)!r}, "
                    "'steal', source='local', trust_repo=True)"], check=True, timeout=120)
    assert (marker_dir / "imported").exists() and (marker_dir / "called").exists()
    for marker in marker_dir.iterdir():
        marker.unlink()
    out = tmp_path / "o.safetensors"
    result = cli("load", repo, "steal", "--source", "local", "--out", out)
    assert not list(marker_dir.iterdir()), "no command ran"
    assert cli("list", repo, "--source", "local").code in (0, 1)
    assert not list(marker_dir.iterdir()), "list imports hubconf.py in the sandbox too"
    assert result.code in (0, 1)
    if result.code == 0:
        assert set(load_file(out)) == {"weight", "bias"}


def test_sandbox_errors_are_safehub_errors(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", HUBCONF + "\n\ndef broken():\n    raise ValueError('x')\n")
    with pytest.raises(SandboxError, match="ValueError"):
        safehub.load(str(repo), "broken", source="local")


def test_local_signed_repo_runs_the_verified_copy(tmp_path: Path, marker_dir: Path) -> None:
    from safehub.signing import sign

    policy, private = _signed_policy(tmp_path, FakeHubStub())
    body = policy.read_text().replace('scope = "acme/*"', f'scope = "path:{tmp_path}/*"')
    policy.write_text(body)
    repo = make_repo(tmp_path / "local")
    sign(repo, private_key=private)
    assert safehub.load(str(repo), "linear", source="local", policy=str(policy))
    (repo / "hubconf.py").write_text(HUBCONF + f"\nimport os\nos.system('touch {marker_dir}/x')\n")
    with pytest.raises(IntegrityError):
        safehub.load(str(repo), "linear", source="local", policy=str(policy))
    assert not (marker_dir / "x").exists()


class FakeHubStub:
    """Enough of FakeHub for write_policy when no server is needed."""

    url = "https://example.invalid"
    api = "https://example.invalid/api"


def test_verified_local_copy_is_private_and_read_only(tmp_path: Path) -> None:
    import contextlib

    from safehub._hub.runner import HubCall, _local_repo
    from safehub.fetch import Fetcher
    from safehub.policy import load_policy
    from safehub.sandbox import Operation
    from safehub.signing import sign

    policy_path, private = _signed_policy(tmp_path, FakeHubStub())
    policy_path.write_text(policy_path.read_text().replace(
        'scope = "acme/*"', f'scope = "path:{tmp_path}/*"'))
    repo = make_repo(tmp_path / "local")
    sign(repo, private_key=private)
    call = HubCall(str(repo), Operation.LIST, source="local")
    with contextlib.ExitStack() as stack:
        policy = load_policy(policy_path)
        copy = _local_repo(policy, call, stack, Fetcher(policy))
        assert copy != repo and copy.name == repo.name
        assert (copy / "hubconf.py").read_text() == HUBCONF
        (repo / "hubconf.py").write_text("import os  # changed after verification\n")
        assert (copy / "hubconf.py").read_text() == HUBCONF, "the run uses the verified bytes"
        assert not os.access(copy / "hubconf.py", os.W_OK) or os.geteuid() == 0
        assert oct((copy / "hubconf.py").stat().st_mode & 0o777) == "0o444"
    assert not copy.exists(), "the private copy is removed after the call"
