"""Local repository folders of any shape: deep trees work, hard links leading out are refused."""

from __future__ import annotations

import os
import pickle
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safehub._tree import copy_tree, links_leaving, remove_tree, walk
from tests.conftest import CliResult
from tests.forked import run_forked

Cli = Callable[..., CliResult]

DEPTH = 1100  # deeper than Python's default recursion limit (1000)


@pytest.fixture
def deep_root(tmp_path: Path) -> Iterator[Path]:
    """A folder for deep trees, removed iteratively afterwards: pytest's own clean-up of old
    temporary folders (shutil.rmtree, recursive on Python 3.11) would fail on them, in every
    later session on this machine."""
    root = tmp_path / "deep"
    root.mkdir()
    yield root
    remove_tree(root)


def _deep(root: Path, depth: int = DEPTH) -> Path:
    """A chain of ``depth`` folders under ``root``; returns the innermost."""
    here = os.fspath(root)
    for _ in range(depth):
        here = os.path.join(here, "d")
        os.mkdir(here)
    return Path(here)


def test_tree_helpers_handle_deep_trees(deep_root: Path) -> None:
    tmp_path = deep_root
    src = tmp_path / "src"
    src.mkdir()
    inner = _deep(src)
    (inner / "leaf.txt").write_text("leaf")
    (src / "link").symlink_to("d")
    assert sum(1 for _ in walk(src)) == DEPTH + 1
    assert sum(1 for _ in walk(src, topdown=False)) == DEPTH + 1
    copy_tree(src, tmp_path / "dst")
    copied = tmp_path / "dst" / os.path.relpath(inner, src) / "leaf.txt"
    assert copied.read_text() == "leaf"
    assert os.readlink(tmp_path / "dst" / "link") == "d"
    os.chmod(inner, 0o555)
    remove_tree(src)
    remove_tree(tmp_path / "dst")
    assert not src.exists() and not (tmp_path / "dst").exists()


def test_walk_matches_os_walk(tmp_path: Path) -> None:
    for rel in ("a/b/c", "a/x", "e", "e/f/g"):
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel / "file").write_text(rel)
    (tmp_path / "a" / "to_e").symlink_to(tmp_path / "e")
    ours = sorted((d, sorted(ds), sorted(fs)) for d, ds, fs in walk(tmp_path))
    theirs = sorted((d, sorted(ds), sorted(fs)) for d, ds, fs in os.walk(tmp_path))
    assert ours == theirs


def test_deep_local_repo_lists_scans_and_audits(cli: Cli, deep_root: Path,
                                                isolated_torch_home: Path) -> None:
    repo = deep_root / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("def linear():\n    return {}\n")
    inner = _deep(repo)
    (inner / "w.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    listed = cli("list", repo, "--source", "local")
    assert listed.code == 0, listed.err
    assert listed.out == "linear\n"
    scanned = cli("scan", repo)
    assert scanned.code == 0, scanned.err
    assert "1 clean" in scanned.err
    audited = cli("audit", "--no-state", repo)
    assert "Traceback" not in audited.err and "RecursionError" not in audited.err


def test_links_leaving_counts_names_inside_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_text("a")
    os.link(tree / "a", tree / "sub" / "a-again")  # both names inside: fine
    outside = tmp_path / "outside"
    outside.write_text("secret")
    os.link(outside, tree / "sub" / "looks-harmless.txt")
    assert links_leaving(tree) == [tree / "sub" / "looks-harmless.txt"]


HUBCONF = textwrap.dedent("""
    import os, torch
    def read(name="notes.txt"):
        data = open(os.path.join(os.path.dirname(__file__), name), "rb").read()
        return {"data": torch.tensor(list(data), dtype=torch.uint8)}
""")


def test_hard_link_out_of_a_local_repo_is_refused(cli: Cli, tmp_path: Path,
                                                  isolated_torch_home: Path) -> None:
    """A world-readable file outside every folder the sandbox may read (Landlock's job), and
    a hard link to it inside the repo: without the check the sandbox hands it over."""
    from safehub.sandbox import Sandbox, SandboxRequest

    private = tmp_path / "private"
    private.mkdir()
    secret = private / "token"
    secret.write_bytes(b"hard-link-marker")
    secret.chmod(0o644)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    os.link(secret, repo / "notes.txt")
    tmp_path.chmod(0o755)

    # The attack without the check: the sandbox's own path rules let the link through.
    with Sandbox() as sandbox:
        leaked = sandbox.run(SandboxRequest.for_load(repo, "read")).tensors["data"]
    assert bytes(leaked.tolist()) == b"hard-link-marker"

    out = tmp_path / "w.safetensors"
    result = cli("load", repo, "read", "--source", "local", "--out", out)
    assert result.code == 2
    assert "hard-linked to a file outside" in result.err and "notes.txt" in result.err
    assert not out.exists()
    for args in (["list", repo], ["help", repo, "read"]):
        assert cli(*args, "--source", "local").code == 2

    # The same folder without the link runs.
    (repo / "notes.txt").unlink()
    (repo / "notes.txt").write_bytes(b"harmless")
    assert cli("load", repo, "read", "--source", "local", "--out", out).code == 0


def test_hard_links_within_the_repo_are_fine(cli: Cli, tmp_path: Path,
                                             isolated_torch_home: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    (repo / "notes.txt").write_bytes(b"shared")
    os.link(repo / "notes.txt", repo / "copy.txt")
    out = tmp_path / "w.safetensors"
    result = cli("load", repo, "read", "name=copy.txt", "--source", "local", "--out", out)
    assert result.code == 0, result.err


def test_remove_tree_removes_folders_their_owner_may_not_list(tmp_path: Path) -> None:
    # What a sandboxed call leaves (chmod is ignored in the sandbox, so a folder keeps the
    # mode it was made with): a folder its owner may write but not list, with a file in it.
    # Removed by its owner, as the parent removes a sandbox's folder (run in a forked
    # process as an unprivileged uid when the tests run as root, who may list anything).
    root = tmp_path / "sandbox"
    hidden = root / "call-1" / "hidden"
    hidden.parent.mkdir(parents=True)
    hidden.mkdir(mode=0o300)
    (hidden / "big").write_bytes(b"x" * 4096)
    os.chmod(hidden, 0o300)
    uid = 65534 if os.geteuid() == 0 else None
    if uid is not None:
        for path in (tmp_path, root, hidden.parent, hidden, hidden / "big"):
            os.chown(path, uid, uid)

    def work() -> None:
        os.chdir(tmp_path)  # pytest's folders above it are private to root
        if uid is not None:
            os.setgid(uid)
            os.setuid(uid)
        remove_tree(root.name)

    run_forked(work)
    left = [] if not root.exists() else [str(p) for p in root.rglob("*")]
    assert not root.exists(), f"left behind: {left}"
