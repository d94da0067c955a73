"""safehub.lock: `safehub lock` writes it, locked refs need no API, frozen refuses the rest."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.errors import IntegrityError, PolicyError, PolicyViolation
from safehub.fetch import Fetcher, Lockfile
from tests.conftest import CliResult
from tests.fetch.fakehub import FakeHub

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_lock_cli_writes_commits_and_digests(
        tmp_path: Path, hub: FakeHub, policy_file: Path, checkpoint: bytes,
        cli: Callable[..., CliResult]) -> None:
    sha = hub.add_repo("acme/net", tags=("v1",))
    url = hub.add_file("/models/net.pt", checkpoint)
    lock = tmp_path / "safehub.lock"
    result = cli("lock", "acme/net:v1", "acme/net", "--url", url, "--lockfile", lock,
                 "--policy", policy_file)
    assert result.code == 0, result.err
    assert f"locked acme/net:v1 -> {sha}" in result.out
    data = tomllib.loads(lock.read_text())
    assert data["version"] == 1
    entry = data["repos"]["acme/net:v1"]
    assert entry["commit"] == sha and entry["ref"] == "v1" and entry["repo"] == "acme/net"
    assert entry["api"] == hub.api and len(entry["archive_sha256"]) == 64
    assert data["repos"]["acme/net"]["ref"] == "" and data["repos"]["acme/net"]["commit"] == sha
    assert data["files"][url] == {"sha256": hashlib.sha256(checkpoint).hexdigest(),
                                  "size": len(checkpoint)}


def test_locked_ref_uses_the_locked_commit_without_resolving_the_ref(
        tmp_path: Path, hub: FakeHub, policy_file: Path, make_fetcher: Callable[..., Fetcher],
        cli: Callable[..., CliResult]) -> None:
    old = hub.add_repo("acme/net", {"hubconf.py": b"old = 1\n"})
    lock = tmp_path / "safehub.lock"
    assert cli("lock", "acme/net:main", "--lockfile", lock, "--policy", policy_file).code == 0
    new = hub.add_repo("acme/net", {"hubconf.py": b"new = 1\n"})  # main moves on
    hub.log.clear()
    checkout = make_fetcher(lockfile=lock).fetch_repo("acme/net:main")
    assert checkout.commit == old and hub.count("/api/repos/acme/net/commits") == 0
    # The API requests besides the archive: the locked commit's fork check in this (fresh)
    # cache, the repository's identity and one compare with its default branch (test_forks).
    assert [r.path for r in hub.requests_to("/api/") if "/zipball/" not in r.path] == [
        "/api/repos/acme/net", f"/api/repos/acme/net/compare/main...{old}"]
    # `safehub lock` (no arguments) updates every entry to what the refs point at now.
    assert cli("lock", "--lockfile", lock, "--policy", policy_file).code == 0
    assert Lockfile.load(lock).repo("acme/net", "main").commit == new  # type: ignore[union-attr]


def test_frozen_refuses_anything_not_locked(
        tmp_path: Path, hub: FakeHub, policy_file: Path, checkpoint: bytes,
        make_fetcher: Callable[..., Fetcher], cli: Callable[..., CliResult]) -> None:
    hub.add_repo("acme/net")
    hub.add_repo("acme/other")
    url = hub.add_file("/models/net.pt", checkpoint)
    other_url = hub.add_file("/models/other.pt", checkpoint)
    lock = tmp_path / "safehub.lock"
    assert cli("lock", "acme/net:main", "--url", url, "--lockfile", lock,
               "--policy", policy_file).code == 0
    hub.log.clear()
    fetcher = make_fetcher(lockfile=lock, frozen=True)
    assert fetcher.fetch_repo("acme/net:main").commit
    assert fetcher.fetch_url(url).from_cache is False
    with pytest.raises(PolicyViolation) as err:
        fetcher.fetch_repo("acme/other:main")
    assert "acme/other:main is not in the frozen lockfile" in err.value.message
    assert "safehub lock acme/other:main" in (err.value.fix or "")
    with pytest.raises(PolicyViolation):
        fetcher.fetch_repo("acme/net:dev")  # another ref of a locked repo is another thing
    with pytest.raises(PolicyViolation):
        fetcher.fetch_url(other_url)
    assert hub.count("/api/repos/acme/other") == 0 and hub.count("/models/other.pt") == 0
    assert lock.read_text().count("[repos.") == 1, "frozen never writes the lockfile"
    # The CLI's --frozen verifies and exits 1 for what is not locked.
    assert cli("lock", "--frozen", "--lockfile", lock, "--policy", policy_file).code == 0
    result = cli("lock", "--frozen", "acme/other:main", "--lockfile", lock,
                 "--policy", policy_file)
    assert result.code == 1 and "not in the frozen lockfile" in result.err


def test_frozen_without_a_lockfile_is_an_error(tmp_path: Path, policy_file: Path) -> None:
    with pytest.raises(PolicyError):
        Fetcher(policy_file, frozen=True)
    with pytest.raises(PolicyError):
        Fetcher(policy_file, lockfile=tmp_path / "missing.lock", frozen=True)


def test_locked_files_must_match_the_lockfile(
        tmp_path: Path, hub: FakeHub, policy_file: Path, checkpoint: bytes,
        make_fetcher: Callable[..., Fetcher], cli: Callable[..., CliResult],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tests.fetch.helpers import torch_bytes

    url = hub.add_file("/models/net.pt", checkpoint)
    lock = tmp_path / "safehub.lock"
    assert cli("lock", "--url", url, "--lockfile", lock, "--policy", policy_file).code == 0
    hub.files["/models/net.pt"] = torch_bytes({"weight": torch.zeros(1)})  # swapped upstream
    with pytest.raises(IntegrityError) as err:
        make_fetcher(lockfile=lock, cache_dir=tmp_path / "fresh").fetch_url(url)
    assert "lockfile" in err.value.message
    # The cached copy still matches the lockfile; a fresh cache gets the swapped file.
    assert cli("lock", "--frozen", "--lockfile", lock, "--policy", policy_file).code == 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "fresh-home"))
    result = cli("lock", "--frozen", "--lockfile", lock, "--policy", policy_file)
    assert result.code == 1 and "SH300" in result.err


def test_locked_checkout_must_have_the_locked_files(
        tmp_path: Path, hub: FakeHub, policy_file: Path, make_fetcher: Callable[..., Fetcher],
        cli: Callable[..., CliResult]) -> None:
    sha = hub.add_repo("acme/net", {"hubconf.py": b"ok = 1\n"})
    lock = tmp_path / "safehub.lock"
    assert cli("lock", f"acme/net:{sha}", "--lockfile", lock, "--policy", policy_file).code == 0
    # The server now serves different files for the same commit.
    from tests.fetch.fakehub import make_zip

    hub.repos["acme/net"].archives[sha] = make_zip("acme-net-x", {"hubconf.py": b"evil\n"},
                                                   comment=sha.encode())
    with pytest.raises(IntegrityError) as err:
        make_fetcher(lockfile=lock, cache_dir=tmp_path / "fresh").fetch_repo(f"acme/net:{sha}")
    assert "differ from" in err.value.message
    assert not (tmp_path / "fresh" / "repos" / "acme" / "net" / sha).exists(), \
        "a checkout that does not match the lockfile is not installed"


def test_invalid_lockfile_lists_every_problem(tmp_path: Path) -> None:
    lock = tmp_path / "safehub.lock"
    lock.write_text('version = 1\n[repos."acme/net"]\nrepo = "acme/net"\napi = "x"\n'
                    'commit = "main"\narchive_sha256 = "zz"\ntree_sha256 = "' + "a" * 64 + '"\n'
                    '[files."https://x/y.pt"]\nsha256 = "short"\nsize = -1\n')
    with pytest.raises(PolicyError) as err:
        Lockfile.load(lock)
    keys = {issue.key for issue in err.value.issues}
    assert {"repos.acme/net.commit", "repos.acme/net.archive_sha256",
            "files.https://x/y.pt.sha256", "files.https://x/y.pt.size"} <= keys


def test_lock_command_exit_codes_and_streams(tmp_path: Path, hub: FakeHub,
                                             policy_file: Path) -> None:
    from tests.conftest import run_module

    hub.add_repo("mallory/evil")
    missing = run_module("lock", "--frozen", "--lockfile", tmp_path / "none.lock",
                         "--policy", policy_file)
    assert missing.code == 2 and missing.out == "" and "lockfile not found" in missing.err
    denied = run_module("lock", "mallory/evil", "--lockfile", tmp_path / "safehub.lock",
                        "--policy", policy_file)
    assert denied.code == 1 and denied.out == "" and "mallory/evil" in denied.err
    assert not (tmp_path / "safehub.lock").exists(), "nothing is written after a failure"
    empty = run_module("lock", "--lockfile", tmp_path / "safehub.lock", "--policy", policy_file)
    assert empty.code == 2 and "nothing to lock" in empty.err
    assert hub.count() == 0


# --- local folders: one entry per canonical real path -----------------------------------------


def _spellings(tmp_path: Path) -> tuple[Path, list[str]]:
    """A local repo folder D/x and other spellings of it: //D/x, D/./x, a symlink alias,
    D/x/ and D/y/../x."""
    real = tmp_path / "x"
    real.mkdir()
    (real / "hubconf.py").write_text("dependencies = []\n")
    (tmp_path / "y").mkdir()
    (tmp_path / "alias").symlink_to(real)
    text = str(real)
    return real, [text, "/" + text, str(tmp_path) + "/./x", str(tmp_path / "alias"),
                  text + "/", str(tmp_path) + "/y/../x"]


def test_every_spelling_of_a_local_folder_is_one_lockfile_entry(
        tmp_path: Path, policy_file: Path, cli: Callable[..., CliResult]) -> None:
    real, spellings = _spellings(tmp_path)
    lock = tmp_path / "safehub.lock"
    for spelling in spellings:  # locking each spelling in turn never adds a second entry
        result = cli("lock", "--path", spelling, "--lockfile", lock, "--policy", policy_file)
        assert result.code == 0, result.err
        data = tomllib.loads(lock.read_text())
        assert list(data["paths"]) == [str(real.resolve())], spelling
    loaded = Lockfile.load(lock)
    for spelling in spellings:  # and each one finds it
        assert loaded.local(spelling) is not None, spelling
        frozen = cli("lock", "--frozen", "--path", spelling, "--lockfile", lock,
                     "--policy", policy_file)
        assert frozen.code == 0 and "verified" in frozen.out, (spelling, frozen.err)
    assert loaded.local(tmp_path / "y") is None


def test_a_hand_written_spelling_is_found_and_replaced(tmp_path: Path) -> None:
    real, _ = _spellings(tmp_path)
    digest = "0" * 64
    lock = tmp_path / "safehub.lock"
    lock.write_text(f'version = 1\n[paths."/{tmp_path}/alias/"]\ntree_sha256 = "{digest}"\n')
    loaded = Lockfile.load(lock)
    assert loaded.local(real) is not None and loaded.local(str(real) + "/.") is not None
    from safehub.fetch import LockedPath

    loaded.add_local(real, LockedPath(tree_sha256="1" * 64))
    assert list(loaded.paths) == [str(real.resolve())]
    lock.write_text('version = 1\n[paths."relative/x"]\ntree_sha256 = "' + digest + '"\n')
    with pytest.raises(PolicyError):
        Lockfile.load(lock)


def test_a_locked_local_folder_must_keep_its_files(
        tmp_path: Path, policy_file: Path, cli: Callable[..., CliResult]) -> None:
    real, spellings = _spellings(tmp_path)
    lock = tmp_path / "safehub.lock"
    assert cli("lock", "--path", real, "--lockfile", lock, "--policy", policy_file).code == 0
    (real / "hubconf.py").write_text("import os\n")
    for spelling in spellings:
        result = cli("lock", "--frozen", "--path", spelling, "--lockfile", lock,
                     "--policy", policy_file)
        assert result.code == 1 and "SH300" in result.err, (spelling, result)
    fetcher = Fetcher(policy_file, lockfile=lock, cache_dir=tmp_path / "cache")
    with pytest.raises(IntegrityError, match="SH300"):
        fetcher.check_local(tmp_path / "alias")
    other = tmp_path / "other"
    other.mkdir()
    frozen = Fetcher(policy_file, lockfile=lock, frozen=True, cache_dir=tmp_path / "cache")
    with pytest.raises(PolicyViolation, match="not in the frozen lockfile"):
        frozen.check_local(other)
    (other / "link").symlink_to(real / "hubconf.py")
    assert cli("lock", "--path", other, "--lockfile", lock, "--policy", policy_file).code != 0


def test_a_lockfile_entry_no_request_can_name_makes_the_lockfile_invalid(
        tmp_path: Path, hub: FakeHub, policy_file: Path, checkpoint: bytes,
        make_fetcher: Callable[..., Fetcher], cli: Callable[..., CliResult]) -> None:
    """A file key edited to carry a trailing space (or a ref with one) matched no request:
    the URL was fetched unlocked, whatever its bytes."""
    import torch

    from tests.fetch.helpers import torch_bytes

    url = hub.add_file("/models/net.pt", checkpoint)
    lock = tmp_path / "safehub.lock"
    assert cli("lock", "--url", url, "--lockfile", lock, "--policy", policy_file).code == 0
    lock.write_text(lock.read_text().replace(f'"{url}"', f'"{url} "'))
    hub.files["/models/net.pt"] = torch_bytes({"weight": torch.zeros(1)})  # swapped upstream
    with pytest.raises(PolicyError) as err:
        make_fetcher(lockfile=lock, cache_dir=tmp_path / "fresh").fetch_url(url)
    assert any("not a usable URL" in issue.message for issue in err.value.issues)
    result = cli("lock", "--frozen", "--lockfile", lock, "--policy", policy_file)
    assert result.code == 2, result.out + result.err
    lock.write_text('version = 1\n[repos."acme/net:main "]\nrepo = "acme/net"\napi = "x"\n'
                    'ref = "main "\ncommit = "' + "a" * 40 + '"\narchive_sha256 = "'
                    + "a" * 64 + '"\ntree_sha256 = "' + "a" * 64 + '"\n')
    with pytest.raises(PolicyError) as err:
        Lockfile.load(lock)
    assert {issue.key for issue in err.value.issues} == {"repos.acme/net:main .ref"}
