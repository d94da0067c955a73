"""torch.hub's ``checkpoints/`` as a verified source: written by the real torch.hub.

Each test lets the real ``torch.hub.load_state_dict_from_url`` download from a loopback
server into TORCH_HOME, stops the server, and then asks safehub (offline, or online with
nothing listening) for the same URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import safehub
from safehub.errors import FetchError, IntegrityError, PolicyViolation
from safehub.fetch import Fetcher
from tests.conftest import CliResult
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import leftovers, torch_bytes, write_policy

REPO_ROOT = Path(__file__).resolve().parents[2]


def _prefixed(stem: str, data: bytes, ext: str = "pth") -> str:
    """torch's download name: the shortest SHA-256 prefix (8+ hex) with a letter in it."""
    digest = hashlib.sha256(data).hexdigest()
    n = next(k for k in range(8, 65) if any(c in "abcdef" for c in digest[:k]))
    return f"{stem}-{digest[:n]}.{ext}"


def _checkpoint(seed: int) -> bytes:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch_bytes({"weight": torch.rand(3, 4, generator=g), "bias": torch.zeros(3)})


def _torch_download(url: str, **kwargs: Any) -> dict[str, object]:
    import torch.hub

    return dict(torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True,
                                                   **kwargs))


def _records(cache: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((cache / "files").glob("*/*.json"))]


@pytest.fixture
def checkpoints(isolated_torch_home: Path) -> Path:
    return isolated_torch_home / "hub" / "checkpoints"


@pytest.fixture
def safehub_cache(isolated_torch_home: Path) -> Path:
    return isolated_torch_home / "hub" / "safehub"


def test_offline_load_imports_what_torch_hub_downloaded(
        hub: FakeHub, policy_file: Path, checkpoints: Path, safehub_cache: Path,
        cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    data = _checkpoint(1)
    name = _prefixed("net", data)
    url = hub.add_file(f"/models/{name}", data)
    expected = _torch_download(url, check_hash=True)
    assert (checkpoints / name).read_bytes() == data
    hub.close()  # nothing answers from here on
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")

    state = hub_load(url, policy_file)
    assert sorted(state) == sorted(expected)
    assert all((state[k] == expected[k]).all() for k in expected)  # type: ignore[attr-defined]
    [record] = _records(safehub_cache)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    prov = record["provenance"]
    assert isinstance(prov, dict)
    assert prov["source"] == "torch.hub checkpoint"
    assert prov["path"] == str(checkpoints / name)
    assert "SHA-256 prefix in the URL's file name" in prov["vouched_by"]
    assert prov["scan"].startswith("clean")

    # A second run is served by safehub's own entry (torch's copy is no longer needed),
    # verified against the record the import wrote.
    (checkpoints / name).unlink()
    opened = Fetcher(policy_file).fetch_url(url)
    assert opened.from_cache and opened.sha256 == record["sha256"]

    # The audit checks the imported entry against that record: clean, then SH400 once the
    # bytes change behind safehub's back (and the next load refuses them too).
    hub_dir = checkpoints.parent
    clean = cli("audit", hub_dir, "--no-state", "-f", "json", "--policy", policy_file)
    entry = _audit_entry(clean.out, opened.path)
    assert entry["findings"] == [] or all(f["rule_id"] != "SH400" for f in entry["findings"])
    os.chmod(opened.path, 0o644)
    opened.path.write_bytes(_checkpoint(2))
    dirty = cli("audit", hub_dir, "--no-state", "-f", "json", "--policy", policy_file)
    assert "SH400" in [f["rule_id"] for f in _audit_entry(dirty.out, opened.path)["findings"]]
    with pytest.raises(IntegrityError, match="SH400"):
        Fetcher(policy_file).fetch_url(url)


def hub_load(url: str, policy: Path) -> dict[str, object]:
    return dict(safehub.load_state_dict_from_url(url, policy=str(policy)))


def _audit_entry(out: str, path: Path) -> dict[str, list[dict[str, str]]]:
    report = json.loads(out)
    [entry] = [e for e in report["files"] if e["path"] == str(path)]
    return entry  # type: ignore[no-any-return]


def test_online_with_the_server_gone_uses_the_torch_copy_first(
        hub: FakeHub, policy_file: Path, checkpoints: Path, safehub_cache: Path) -> None:
    """Online, a verified torch.hub copy is used before the network (no request at all)."""
    data = _checkpoint(3)
    name = _prefixed("net", data)
    url = hub.add_file(f"/models/{name}", data)
    _torch_download(url, check_hash=True)
    before = hub.count()
    got = Fetcher(policy_file).fetch_url(url)
    assert hub.count() == before
    assert not got.from_cache and got.sha256 == hashlib.sha256(data).hexdigest()
    assert _records(safehub_cache)[0]["provenance"]["path"] == str(  # type: ignore[index]
        checkpoints / name)


def test_model_dir_is_where_torch_put_it(hub: FakeHub, policy_file: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = _checkpoint(4)
    name = _prefixed("net", data)
    url = hub.add_file(f"/m/{name}", data)
    model_dir = tmp_path / "models"
    _torch_download(url, model_dir=str(model_dir))
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    state = safehub.load_state_dict_from_url(url, model_dir=str(model_dir), policy=str(policy_file))
    assert sorted(state) == ["bias", "weight"]
    [record] = _records(model_dir / "safehub")
    assert record["provenance"]["path"] == str(model_dir / name)  # type: ignore[index]


def test_tampered_checkpoint_is_refused_and_not_imported(
        hub: FakeHub, policy_file: Path, checkpoints: Path, safehub_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = _checkpoint(5)
    name = _prefixed("net", data)
    url = hub.add_file(f"/models/{name}", data)
    _torch_download(url, check_hash=True)
    (checkpoints / name).write_bytes(_checkpoint(6))  # other bytes under the same name
    # Online: the copy is passed over, the URL downloaded and verified instead.
    fresh = Fetcher(policy_file).fetch_url(url)
    assert fresh.sha256 == hashlib.sha256(data).hexdigest()
    assert "provenance" not in _records(safehub_cache)[0]
    # Offline with an empty cache: refused, naming the mismatch, and nothing is imported.
    shutil_rm(safehub_cache)
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    with pytest.raises(IntegrityError, match="SH540") as info:
        hub_load(url, policy_file)
    assert info.value.subject == str(checkpoints / name)
    assert "SAFEHUB_OFFLINE" in (info.value.fix or "")
    assert leftovers(safehub_cache) == []


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


HOSTILE_RUN = textwrap.dedent("""
    import sys, torch.hub
    torch.hub.load_state_dict_from_url(sys.argv[1], check_hash=True, progress=False)
""")


def test_hostile_checkpoint_with_a_matching_prefix_is_refused_by_the_scan(
        hub: FakeHub, policy_file: Path, checkpoints: Path, safehub_cache: Path,
        tmp_path: Path, isolated_torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    data = torch_bytes({"weight": _Marker(str(marker))})
    name = _prefixed("evil", data)
    checkpoints.mkdir(parents=True)
    (checkpoints / name).write_bytes(data)
    url = f"{hub.url}/models/{name}"  # never served: torch and safehub read the copy
    hub.close()
    # Without safehub: torch.hub finds its cached file, checks nothing, runs the payload.
    env = {**os.environ, "TORCH_HOME": str(isolated_torch_home)}
    subprocess.run([sys.executable, "-c", HOSTILE_RUN, url], env=env, check=False,
                   capture_output=True, timeout=300)
    assert marker.read_text() == "ran"
    marker.unlink()
    # With safehub, online or offline: the prefix matches, the scan refuses, no import.
    for offline in ("0", "1"):
        monkeypatch.setenv("SAFEHUB_OFFLINE", offline)
        with pytest.raises(PolicyViolation, match="not imported") as info:
            hub_load(url, policy_file)
        assert info.value.subject == str(checkpoints / name)
        assert any("SH1" in step for step in info.value.trail)
    assert not marker.exists()
    assert leftovers(safehub_cache) == []


def test_unvouched_copy_needs_a_pin(hub: FakeHub, tmp_path: Path, checkpoints: Path,
                                    safehub_cache: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = _checkpoint(7)
    url = hub.add_file("/models/plain.pt", data)  # no hash prefix in the name
    _torch_download(url)
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    plain = write_policy(tmp_path / "plain.toml", hub)
    with pytest.raises(FetchError, match="SH541") as info:
        hub_load(url, plain)
    assert "pin" in (info.value.fix or "")
    assert leftovers(safehub_cache) == []
    # A policy pin vouches for it: imported, the record naming the pin.
    pinned = write_policy(tmp_path / "pinned.toml", hub, body=(
        f'[downloads.pins]\n"{url}" = "{hashlib.sha256(data).hexdigest()}"\n'))
    assert sorted(hub_load(url, pinned)) == ["bias", "weight"]
    [record] = _records(safehub_cache)
    assert "downloads.pins" in record["provenance"]["vouched_by"]  # type: ignore[index]
    # A pin the copy does not match: refused like a mismatching prefix.
    shutil_rm(safehub_cache)
    wrong = write_policy(tmp_path / "wrong.toml", hub, body=(
        f'[downloads.pins]\n"{url}" = "{"ab" * 32}"\n'))
    with pytest.raises(IntegrityError, match="SH540"):
        hub_load(url, wrong)


def test_symlinked_copy_is_not_a_source(hub: FakeHub, policy_file: Path, checkpoints: Path,
                                        tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = _checkpoint(8)
    name = _prefixed("net", data)
    elsewhere = tmp_path / "elsewhere.pth"
    elsewhere.write_bytes(data)
    checkpoints.mkdir(parents=True)
    (checkpoints / name).symlink_to(elsewhere)
    url = f"{hub.url}/models/{name}"
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    with pytest.raises(FetchError, match="symbolic link"):
        hub_load(url, policy_file)


def shutil_rm(path: Path) -> None:
    import shutil

    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o700)
    shutil.rmtree(path)


# --- repository folders ------------------------------------------------------------------

HUBCONF = b"dependencies = []\n\n\ndef tiny():\n    \"\"\"A tiny model.\"\"\"\n    return 1\n"
REPO_FILES = {"hubconf.py": HUBCONF, "pkg/util.py": b"X = 1\n", "README.md": b"net\n"}


def _torch_checkout(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, spec: str) -> list[str]:
    """Let the real torch.hub download, extract and import ``spec``'s hubconf, from the
    fake server (torch.hub only knows github.com's archive URL: that one function is
    pointed at the loopback server)."""
    import torch.hub

    monkeypatch.setattr(torch.hub, "_git_archive_link",
                        lambda owner, name, ref: f"{hub.api}/repos/{owner}/{name}/zipball/{ref}")
    entries = torch.hub.list(spec, trust_repo=True, skip_validation=True,  # type: ignore[no-untyped-call]
                             verbose=False)
    return list(entries)


@pytest.fixture
def locked_repo(hub: FakeHub, policy_file: Path, tmp_path: Path, checkpoints: Path,
                monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    """As :func:`_lock_torch_checkout`, then the server stopped."""
    got = _lock_torch_checkout(hub, policy_file, tmp_path, checkpoints, monkeypatch)
    hub.close()
    return got


def _lock_torch_checkout(hub: FakeHub, policy_file: Path, tmp_path: Path, checkpoints: Path,
                         monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    """acme/net:main checked out by torch.hub, locked by safehub on another machine (its
    own cache): (commit, lockfile, torch.hub's folder)."""
    sha = hub.add_repo("acme/net", dict(REPO_FILES))
    assert _torch_checkout(hub, monkeypatch, "acme/net:main") == ["tiny"]
    folder = checkpoints.parent / "acme_net_main"
    assert (folder / "hubconf.py").read_bytes() == HUBCONF
    lock = tmp_path / "safehub.lock"
    elsewhere = Fetcher(policy_file, lockfile=lock, cache_dir=tmp_path / "ci-cache")
    assert elsewhere.fetch_repo("acme/net:main").commit == sha
    assert elsewhere.lockfile is not None
    elsewhere.lockfile.save()
    return sha, lock, folder


def test_a_torch_hub_folder_the_lockfile_verifies_is_imported_once_its_commit_is_checked(
        hub: FakeHub, policy_file: Path, tmp_path: Path, checkpoints: Path,
        safehub_cache: Path, cli: Callable[..., CliResult],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sha, lock, folder = _lock_torch_checkout(hub, policy_file, tmp_path, checkpoints,
                                             monkeypatch)
    # Offline, the lockfile's commit was never checked against forks in this cache (the
    # lockfile is an input): refused before the folder is read, naming the online check.
    with pytest.raises(FetchError, match="has not confirmed") as info:
        Fetcher(policy_file, lockfile=lock, offline=True).fetch_repo("acme/net:main")
    assert "safehub lock --frozen" in (info.value.fix or "")
    assert leftovers(safehub_cache) == []
    (folder / "__pycache__").mkdir(exist_ok=True)  # what torch's in-place import leaves
    (folder / "__pycache__" / "hubconf.cpython-3.pyc").write_bytes(b"bytecode")
    # Online: the commit is checked (API requests only) and the folder imported, recorded
    # as the repo's own: offline runs then use safehub's entry.
    archives = hub.count("/codeload/")
    got = Fetcher(policy_file, lockfile=lock).fetch_repo("acme/net:main")
    assert hub.count("/codeload/") == archives
    hub.close()
    assert got.commit == sha and not got.from_cache
    assert sorted(p.name for p in got.path.iterdir()) == ["README.md", "hubconf.py", "pkg"]
    [record_path] = (safehub_cache / "repos").glob("*/*/*.json")
    record = json.loads(record_path.read_text())
    assert record["provenance"]["path"] == str(folder)
    assert str(lock) in record["provenance"]["vouched_by"]
    assert record["in_repo"] is True
    # The second run is safehub's own verified entry; the audit checks it by its record.
    again = Fetcher(policy_file, lockfile=lock, offline=True).fetch_repo("acme/net:main")
    assert again.from_cache
    os.chmod(got.path, 0o755)
    os.chmod(got.path / "hubconf.py", 0o644)
    (got.path / "hubconf.py").write_bytes(HUBCONF + b"import os\n")
    result = cli("audit", safehub_cache, "--no-state", "-f", "json", "--policy", policy_file)
    rules = [f["rule_id"] for e in json.loads(result.out)["files"] for f in e["findings"]]
    assert "SH400" in rules
    with pytest.raises(IntegrityError, match="SH400"):
        Fetcher(policy_file, lockfile=lock, offline=True).fetch_repo("acme/net:main")


def test_online_a_verified_torch_hub_folder_is_used_before_the_network(
        hub: FakeHub, policy_file: Path, tmp_path: Path, checkpoints: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sha, lock, _folder = _lock_torch_checkout(hub, policy_file, tmp_path, checkpoints,
                                              monkeypatch)
    before = hub.count()
    got = Fetcher(policy_file, lockfile=lock).fetch_repo("acme/net:main")
    # The lockfile names the commit and torch.hub has the files: no archive is downloaded;
    # the only requests are the fork check of the locked commit (the repository's identity,
    # one compare with its default branch), which this cache now records.
    assert [r.path for r in hub.log[before:] if "/compare/" not in r.path and
            not r.path.endswith("/repos/acme/net")] == []
    assert got.commit == sha and not got.from_cache
    again = hub.count()
    assert Fetcher(policy_file, lockfile=lock).fetch_repo("acme/net:main").from_cache
    assert hub.count() == again


def test_torch_hub_folder_without_a_lockfile_entry_is_refused_offline(
        locked_repo: tuple[str, Path, Path], policy_file: Path, safehub_cache: Path) -> None:
    _sha, _lock, folder = locked_repo
    with pytest.raises(FetchError, match="SH542") as info:
        Fetcher(policy_file, offline=True).fetch_repo("acme/net:main")
    assert info.value.subject == str(folder)
    assert "safehub lock acme/net:main" in (info.value.fix or "")
    assert "SAFEHUB_OFFLINE" in (info.value.fix or "")
    assert leftovers(safehub_cache) == []


def test_changed_torch_hub_folder_is_refused_and_not_imported(
        hub: FakeHub, policy_file: Path, tmp_path: Path, checkpoints: Path,
        safehub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online (offline, a lockfile commit is refused before any folder is read): a changed
    folder is passed over and the archive downloaded instead."""
    _sha, lock, folder = _lock_torch_checkout(hub, policy_file, tmp_path, checkpoints,
                                              monkeypatch)
    (folder / "pkg" / "util.py").write_bytes(b"import os; os.system('true')\n")
    (folder / "pkg" / "link.py").symlink_to("/etc/hostname")  # and a link smuggled in
    archives = hub.count("/codeload/")
    got = Fetcher(policy_file, lockfile=lock).fetch_repo("acme/net:main")
    assert hub.count("/codeload/") == archives + 1
    assert (got.path / "pkg" / "util.py").read_bytes() == b"X = 1\n"
    assert not (got.path / "pkg" / "link.py").exists()
    [record_path] = (safehub_cache / "repos").glob("*/*/*.json")
    assert not json.loads(record_path.read_text()).get("provenance")


def test_sandboxed_entrypoint_gets_weights_from_torch_hub_offline(
        hub: FakeHub, policy_file: Path, checkpoints: Path, safehub_cache: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hubconf's own load_state_dict_from_url, brokered by the parent, is served from
    what torch.hub downloaded, with the network gone."""
    data = _checkpoint(9)
    name = _prefixed("lin", data)
    url = hub.add_file(f"/models/{name}", data)
    expected = _torch_download(url, check_hash=True)
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(f"""
        dependencies = ["torch"]
        import torch


        def net():
            m = torch.nn.Linear(4, 3)
            m.load_state_dict(torch.hub.load_state_dict_from_url({url!r}, check_hash=True))
            return m
    """))
    state = safehub.load(str(repo), "net", source="local", policy=str(policy_file))
    assert sorted(state) == ["bias", "weight"]
    assert all((state[k] == v).all() for k, v in expected.items())
    assert _records(safehub_cache)[0]["provenance"]["path"] == str(  # type: ignore[index]
        checkpoints / name)


def test_audit_holds_the_torch_hub_file_to_the_imported_digest(
        hub: FakeHub, policy_file: Path, checkpoints: Path,
        cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    data = _checkpoint(10)
    name = _prefixed("net", data)
    url = hub.add_file(f"/models/{name}", data)
    _torch_download(url, check_hash=True)
    torch_file = checkpoints / name

    def rules() -> list[str]:
        out = cli("audit", checkpoints.parent, "--no-state", "-f", "json", "--policy",
                  policy_file).out
        return [f["rule_id"] for f in _audit_entry(out, torch_file)["findings"]]

    assert "SH401" in rules()  # torch.hub alone: only an 8-hex prefix is known
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    hub_load(url, policy_file)
    assert "SH401" not in rules() and "SH400" not in rules()  # the full digest is known now
    torch_file.write_bytes(data + b"\0")
    assert "SH400" in rules()


# --- a caller's file_name picks the file, never what vouches for it -----------------------


def _two_downloads(hub: FakeHub) -> tuple[bytes, str, bytes, str]:
    """URL A (never downloaded by torch) and B, which torch.hub really downloaded."""
    a, b = _checkpoint(20), _checkpoint(21)
    url_a = hub.add_file(f"/models/{_prefixed('a', a)}", a)
    url_b = hub.add_file(f"/models/{_prefixed('b', b)}", b)
    _torch_download(url_b, check_hash=True)
    return a, url_a, b, url_b


def test_file_name_of_another_download_does_not_vouch_for_a_url(
        hub: FakeHub, policy_file: Path, checkpoints: Path, tmp_path: Path) -> None:
    a, url_a, b, url_b = _two_downloads(hub)
    name_b = url_b.rsplit("/", 1)[1]
    # torch.hub itself serves B's file for A when asked under B's name.
    torch_got, b_state = _torch_download(url_a, file_name=name_b), torch_load_bytes(b)
    assert all((torch_got[k] == v).all() for k, v in b_state.items())  # type: ignore[attr-defined]
    sha_a, sha_b = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    lock = tmp_path / "safehub.lock"
    fetcher = Fetcher(policy_file, lockfile=lock)
    with fetcher.open_url(url_a, file_name=name_b) as opened:
        assert opened.info.sha256 == sha_a and opened.file.read() == a
    assert hub.count(url_a.split(hub.url, 1)[1]) == 1  # downloaded, not taken from B's file
    assert fetcher.lockfile is not None
    fetcher.lockfile.save()
    assert sha_a in lock.read_text() and sha_b not in lock.read_text()
    # The URL-keyed entry is A's: a plain load (another caller) gets A's bytes.
    with Fetcher(policy_file).open_url(url_a) as opened:
        assert opened.file.read() == a


def test_file_name_with_check_hash_checks_but_does_not_vouch(
        hub: FakeHub, policy_file: Path, safehub_cache: Path) -> None:
    """check_hash reads the prefix of the caller's name (as torch.hub): B's prefix is then
    required of A's download, which does not have it; B's file is still not taken."""
    _a, url_a, _b, url_b = _two_downloads(hub)
    with pytest.raises(IntegrityError, match="SH300"):
        Fetcher(policy_file).fetch_url(url_a, file_name=url_b.rsplit("/", 1)[1],
                                       check_hash=True)
    assert _records(safehub_cache) == [] and leftovers(safehub_cache) == []


def test_offline_file_name_of_another_download_is_not_imported(
        hub: FakeHub, policy_file: Path, checkpoints: Path, safehub_cache: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _a, url_a, b, url_b = _two_downloads(hub)
    name_b = url_b.rsplit("/", 1)[1]
    plain_url = hub.add_file("/models/plain.pt", _checkpoint(22))  # no prefix in its name
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    # A's own name carries A's prefix: B's bytes do not match it.
    with pytest.raises(IntegrityError, match="SH540"):
        Fetcher(policy_file).fetch_url(url_a, file_name=name_b)
    # A URL without a prefix: B's name vouches for nothing, and neither does a pin on it.
    with pytest.raises(FetchError, match="SH541") as info:
        Fetcher(policy_file).fetch_url(plain_url, file_name=name_b)
    assert "not the URL's own" in info.value.message
    by_name = write_policy(tmp_path / "by-name.toml", hub, body=(
        f'[downloads.pins]\n"{name_b}" = "{hashlib.sha256(b).hexdigest()}"\n'))
    with pytest.raises(FetchError, match="SH541"):
        Fetcher(by_name).fetch_url(plain_url, file_name=name_b)
    assert _records(safehub_cache) == [] and leftovers(safehub_cache) == []


def test_file_name_copy_of_the_url_itself_is_imported_when_the_url_is_pinned(
        hub: FakeHub, tmp_path: Path, checkpoints: Path, safehub_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub keeps ``url`` under the caller's file_name: a pin of the URL (or of its own
    file name) vouches for that copy."""
    data = _checkpoint(23)
    url = hub.add_file("/models/plain.pt", data)
    _torch_download(url, file_name="mine.pt")
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    sha = hashlib.sha256(data).hexdigest()
    for key in (url, "plain.pt"):
        if safehub_cache.exists():
            shutil_rm(safehub_cache)
        pinned = write_policy(tmp_path / "pinned.toml", hub,
                              body=f'[downloads.pins]\n"{key}" = "{sha}"\n')
        got = Fetcher(pinned).fetch_url(url, file_name="mine.pt")
        assert got.sha256 == sha
        assert _records(safehub_cache)[0]["provenance"]["path"] == str(  # type: ignore[index]
            checkpoints / "mine.pt")


def test_sandboxed_hubconf_cannot_bind_a_url_to_another_download(
        hub: FakeHub, policy_file: Path, tmp_path: Path) -> None:
    """End to end: an untrusted hubconf, in the sandbox, asks for A under B's file name; the
    parent's later plain load of A gets A."""
    a, url_a, _b, url_b = _two_downloads(hub)
    repo = tmp_path / "evil"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(f"""
        dependencies = ["torch"]
        import torch


        def net():
            torch.hub.load_state_dict_from_url({url_a!r}, file_name={url_b.rsplit("/", 1)[1]!r})
            return torch.nn.Linear(1, 1)
    """))
    safehub.load(str(repo), "net", source="local", policy=str(policy_file), trust_repo=True)
    state = safehub.load_state_dict_from_url(url_a, policy=str(policy_file))
    expected = torch_load_bytes(a)
    assert sorted(state) == sorted(expected)
    assert all((state[k] == v).all() for k, v in expected.items())  # type: ignore[attr-defined]


def torch_load_bytes(data: bytes) -> dict[str, Any]:
    import io

    import torch

    return dict(torch.load(io.BytesIO(data), weights_only=True))


def test_a_short_hash_prefix_is_checked_but_does_not_vouch(
        hub: FakeHub, policy_file: Path, checkpoints: Path, safehub_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub keeps B's bytes under A's file name (``file_name=`` of another download).
    A caller's ``hash_prefix`` of fewer than 8 hex digits (one matches 1 file in 16) is
    required of the bytes but does not tie torch.hub's copy to A's URL: it is not imported
    as A's download; 8 or more digits vouch, as a prefix in the URL's own name does."""
    a, b = _checkpoint(30), _checkpoint(31)
    url_a = hub.add_file("/models/plain-a.pt", a)
    url_b = hub.add_file("/models/other.pt", b)
    _torch_download(url_b, file_name="plain-a.pt")  # B's bytes under A's name
    assert (checkpoints / "plain-a.pt").read_bytes() == b
    hub.close()
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    sha_b = hashlib.sha256(b).hexdigest()
    for short in (sha_b[:1], sha_b[:7]):
        with pytest.raises(FetchError, match="SH541"):
            Fetcher(policy_file).fetch_url(url_a, hash_prefix=short)
        assert _records(safehub_cache) == []
    assert Fetcher(policy_file).fetch_url(url_a, hash_prefix=sha_b[:8]).sha256 == sha_b
