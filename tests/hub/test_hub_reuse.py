"""Warm children through the hub API: which calls share one (same content, policy and
fetcher settings), policy ``[sandbox] reuse``, and values identical to torch.hub's
consecutive calls with a seed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import safehub
from safehub.errors import PolicyError
from safehub.policy import load_policy
from tests.forked import run_forked

HELPER = textwrap.dedent("""
    import os
    import torch
    TOKEN = int.from_bytes(os.urandom(6), "little")
    NOISE = torch.rand(2)  # drawn as it is imported: after the seed only on a first call
""")

HUBCONF = textwrap.dedent('''
    dependencies = ["torch"]
    import random

    import torch

    import helper

    _DRAWN = torch.rand(1)  # each execution of hubconf.py draws, as under torch.hub


    def probe():
        return {"helper": torch.tensor([helper.TOKEN])}


    def net():
        model = torch.nn.Linear(4, 3)
        model.register_buffer("py_random", torch.tensor([random.random()]))
        model.register_buffer("noise", helper.NOISE.clone())
        return model
''')


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "hubconf.py").write_text(HUBCONF)
    (root / "helper.py").write_text(HELPER)
    return root


def token(repo: Path, policy: str | Path | None = None) -> int:
    return int(safehub.load(str(repo), "probe", source="local", policy=policy)["helper"])


def write(path: Path, body: str) -> Path:
    path.write_text(f'schema = 1\nname = "{path.stem}"\nextends = "default"\n{body}')
    return path


def test_calls_of_one_repo_share_a_warm_child(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert token(repo) == token(repo)


def test_another_policy_or_content_gets_another_child(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = token(repo, "default")
    assert token(repo, "default") == first
    # Any other effective policy (here a tighter scanner setting): another child.
    tighter = write(tmp_path / "tighter.toml", '[scanner]\nblock_severity = "info"\n')
    assert token(repo, tighter) != first
    # The folder's content is part of the identity: an edited module means a new child.
    with (repo / "helper.py").open("a") as fh:
        fh.write("# edited\n")
    edited = token(repo, "default")
    assert edited != first
    assert token(repo, "default") == edited


def test_policy_per_call_gives_a_fresh_child_each_call(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    per_call = write(tmp_path / "per_call.toml", '[sandbox]\nreuse = "per-call"\n')
    assert load_policy(per_call).model.sandbox.reuse == "per-call"
    assert token(repo, per_call) != token(repo, per_call)


def test_per_repo_is_a_loosening_of_strict(tmp_path: Path) -> None:
    assert load_policy("strict").model.sandbox.reuse == "per-call"
    assert load_policy("default").model.sandbox.reuse == "per-repo"
    looser = tmp_path / "looser.toml"
    looser.write_text('schema = 1\nname = "looser"\nextends = "strict"\n'
                      '[sandbox]\nreuse = "per-repo"\n')
    with pytest.raises(PolicyError) as refused:
        load_policy(looser)
    assert any("sandbox.reuse" in str(issue) for issue in refused.value.issues)
    looser.write_text('schema = 1\nname = "looser"\nextends = "strict"\n'
                      'loosen = ["sandbox.reuse"]\n[sandbox]\nreuse = "per-repo"\n')
    assert load_policy(looser).model.sandbox.reuse == "per-repo"
    with pytest.raises(PolicyError):
        write(tmp_path / "bad.toml", '[sandbox]\nreuse = "per-process"\n')
        load_policy(tmp_path / "bad.toml")


def torch_hub_twice(repo: Path, seed: int, out: Path) -> list[dict[str, torch.Tensor]]:
    """Two consecutive seeded torch.hub.load calls in one throwaway process."""
    code = textwrap.dedent(f"""
        import random
        import numpy
        import torch
        from safetensors.torch import save_file
        for i in range(2):
            torch.manual_seed({seed}); random.seed({seed}); numpy.random.seed({seed})
            m = torch.hub.load({str(repo)!r}, "net", source="local", trust_repo=True)
            save_file({{k: v.contiguous() for k, v in m.state_dict().items()}},
                      {str(out)!r} + str(i))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return [load_file(f"{out}{i}") for i in range(2)]


def test_seeded_calls_give_torch_hubs_values_call_after_call(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    want = torch_hub_twice(repo, 7, tmp_path / "t.safetensors")
    # torch.hub's first call imports helper.py (which draws) after the seed, its second
    # does not: the initial weights differ between its calls, and each safehub call
    # matches its counterpart.
    assert not torch.equal(want[0]["weight"], want[1]["weight"])
    got = [safehub.load(str(repo), "net", source="local", seed=7) for _ in range(2)]
    for mine, theirs in zip(got, want, strict=True):
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), key


def test_a_folder_the_digest_cannot_list_has_no_identity(tmp_path: Path) -> None:
    # A folder its reader may enter but not list (mode 0o711): the sandbox can import
    # sub/mod.py by name, so a digest that skipped it would let an edited module go on
    # being served by a warm child. Computed as an unprivileged uid in a forked process
    # when the tests run as root (who may list anything).
    import os

    from safehub._hub.reuse import local_tree_identity

    repo = make_repo(tmp_path / "repo")
    sub = repo / "sub"
    sub.mkdir()
    (sub / "mod.py").write_text("VALUE = 1\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(sub, 0o711 if os.geteuid() == 0 else 0o311)

    def work() -> bytes:
        os.chdir(tmp_path)  # pytest's folders above it are private to root
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        listed = sorted(os.listdir("repo"))  # the folder itself is readable
        return f"{listed} {local_tree_identity(Path('repo'))!r}".encode()

    try:
        told = run_forked(work).decode()
    finally:
        os.chmod(sub, 0o755)
    assert told == "['helper.py', 'hubconf.py', 'sub'] None"
