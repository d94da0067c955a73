"""A commit must belong to the repository it is loaded as, not to a fork of it.

GitHub serves every commit of a fork network under the parent's URLs
(``/repos/OWNER/REPO/commits/SHA``, the zipball, ``refs/pull/N/head``): without a check,
``acme/net:<sha pushed to a fork>`` runs the fork's code under ``acme``'s trust. The fake
hub serves fork commits the same way (the first test shows it); safehub refuses them
(SH307) and says to load the fork by its own name. Branch and tag names, and commits
already established (a cache record of a check or of a name's head), cost no extra
request; a lockfile's commit is checked once per cache (the file is an input)."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from safehub.errors import FetchError, IntegrityError, InvalidIdentifier
from safehub.fetch import Fetcher, Lockfile
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import leftovers, write_policy

EVIL = {"hubconf.py": b"import os\nos.environ['SAFEHUB_FORK_MARKER'] = '1'\n"}


def _get(url: str) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.fixture
def fork(hub: FakeHub) -> str:
    hub.add_repo("acme/net")
    return hub.add_fork_commit("acme/net", EVIL, pull=7)


def test_the_parent_urls_serve_a_fork_commit_as_github_does(hub: FakeHub, fork: str) -> None:
    # The attack's premise, on the fake as on GitHub: the parent's API answers for it.
    assert _get(f"{hub.api}/repos/acme/net/commits/{fork}") == 200
    assert _get(f"{hub.api}/repos/acme/net/zipball/{fork}") == 302


@pytest.mark.parametrize("ref", ["full", "short", "refs/pull/7/head", "pull/7/head"])
def test_a_fork_commit_is_refused_under_the_parent_name(
        ref: str, hub: FakeHub, fork: str, make_fetcher: Callable[..., Fetcher],
        cache_dir: Path) -> None:
    spec = {"full": fork, "short": fork[:7]}.get(ref, ref)
    with pytest.raises(IntegrityError) as err:
        make_fetcher().fetch_repo(f"acme/net:{spec}")
    message = err.value.message
    assert message.startswith("SH307") and fork in message and "acme/net" in message
    assert "fork by its own name" in (err.value.fix or "")
    assert hub.count("/codeload/") == 0, "no archive of the fork commit is downloaded"
    assert leftovers(cache_dir) == []


def test_a_describe_name_of_a_fork_commit_is_refused(
        hub: FakeHub, fork: str, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    # git reads NAME-gHEX (git describe output) as the commit abbreviated HEX when no ref
    # has that name (`git rev-parse anything-g<abbrev>` names an unreachable commit): the
    # fake answers it as git would. It is no branch or tag name, so it gets the fork check.
    describe = f"v1.0-3-g{fork[:8]}"
    hub.repos["acme/net"].refs[describe] = fork
    with pytest.raises(IntegrityError, match="SH307"):
        make_fetcher().fetch_repo(f"acme/net:{describe}")
    assert hub.count("/codeload/") == 0
    assert leftovers(cache_dir) == []


def test_a_branch_spelled_like_describe_output_still_loads(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net", ref="fix-gdeadbeef")
    assert make_fetcher().fetch_repo("acme/net:fix-gdeadbeef").commit == sha


@pytest.mark.parametrize("ref", ["heads/./main", "release/.hidden", "a/.b/c"])
def test_a_ref_with_a_dot_component_is_refused_before_any_request(
        ref: str, hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    # git refuses such a component; in the URL "x/./y" would be requested as "x/y".
    hub.add_repo("acme/net")
    with pytest.raises(InvalidIdentifier, match="invalid ref"):
        make_fetcher().fetch_repo(f"acme/net:{ref}")
    assert hub.count() == 0


def test_a_policy_pin_to_a_fork_commit_is_refused(
        tmp_path: Path, hub: FakeHub, fork: str, make_fetcher: Callable[..., Fetcher]) -> None:
    policy = write_policy(tmp_path / "pinned.toml", hub,
                          body=f'[repos."acme/net"]\ncommit = "{fork}"\n')
    with pytest.raises(IntegrityError, match="SH307"):
        make_fetcher(policy=policy).fetch_repo("acme/net")


def test_own_commits_on_any_branch_or_tag_are_accepted(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    old = hub.add_repo("acme/net", {"hubconf.py": b"v = 1\n"})  # main, then main moves on
    hub.add_repo("acme/net", {"hubconf.py": b"v = 2\n"})
    release = hub.add_repo("acme/net", {"hubconf.py": b"v = 3\n"}, ref="release/1.0",
                           tags=("v1.0",))  # a tag on a release branch, not on main
    fix = hub.add_repo("acme/net", {"hubconf.py": b"v = 4\n"}, ref="dev")
    hub.add_repo("acme/net", {"hubconf.py": b"v = 5\n"}, ref="dev")  # fix is behind dev
    fetcher = make_fetcher()
    for sha in (old, release, fix, old[:7]):
        assert fetcher.fetch_repo(f"acme/net:{sha}").commit.startswith(sha)
    # old: one compare with main; release: main, then the branch and tag heads; fix: main,
    # heads, then a compare with the other branches.
    assert hub.count("/api/repos/acme/net/compare/main...") >= 3


def test_branch_and_tag_names_and_established_commits_cost_no_check(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net", tags=("v1",))
    fetcher = make_fetcher()
    fetcher.fetch_repo("acme/net:main")
    fetcher.fetch_repo("acme/net:v1")
    fetcher.fetch_repo("acme/net")
    checks = ("/api/repos/acme/net/compare/", "/api/repos/acme/net/branches",
              "/api/repos/acme/net/tags")
    assert sum(hub.count(p) for p in checks) == 0, "a name resolves to its own head"
    # The checkout downloaded by name is recorded as the repo's own: asking for its SHA
    # later needs no request at all.
    before = hub.count()
    assert fetcher.fetch_repo(f"acme/net:{sha}").from_cache
    assert hub.count() == before
    # A locked commit is checked once per cache, like a SHA (the lockfile is an input, see
    # test_a_lockfile_entry_naming_a_fork_commit_is_refused): one compare with the default
    # branch, recorded, so the next load from that cache asks nothing.
    lock = Lockfile(tmp_path / "safehub.lock")
    make_fetcher(lockfile=lock, cache_dir=tmp_path / "other").fetch_repo("acme/net:main")
    assert sum(hub.count(p) for p in checks) == 0, "locking by name is established by the API"
    make_fetcher(lockfile=lock, cache_dir=tmp_path / "third").fetch_repo("acme/net:main")
    assert hub.count("/api/repos/acme/net/compare/main...") == 1
    before = hub.count()
    assert make_fetcher(lockfile=lock, cache_dir=tmp_path / "third").fetch_repo(
        "acme/net:main").from_cache
    assert hub.count() == before


def test_offline_cannot_confirm_an_unchecked_commit(
        hub: FakeHub, fork: str, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    # A checkout cached without the check (e.g. by an older safehub) cannot be confirmed
    # offline: refused, not assumed.
    import json

    sha = hub.add_repo("acme/net", {"hubconf.py": b"x = 1\n"})
    make_fetcher().fetch_repo(f"acme/net:{sha}")
    (record_path,) = (cache_dir / "repos").rglob(f"{sha}.json")
    record = json.loads(record_path.read_text())
    assert record["in_repo"] is True
    record_path.chmod(0o644)
    record["in_repo"] = False
    record_path.write_text(json.dumps(record))
    with pytest.raises(FetchError, match="cannot confirm"):
        make_fetcher(offline=True).fetch_repo(f"acme/net:{sha}")
    assert make_fetcher().fetch_repo(f"acme/net:{sha}").from_cache  # online: checked again
    assert json.loads(record_path.read_text())["in_repo"] is True, "and recorded"
    assert make_fetcher(offline=True).fetch_repo(f"acme/net:{sha}").from_cache


def _lock_to(tmp_path: Path, hub: FakeHub, commit: str) -> Path:
    """A lockfile entry for acme/net:main naming ``commit`` (as an edit to it would)."""
    import hashlib

    from safehub._fetch.cache import tree_digest
    from safehub._fetch.lockfile import LockedRepo

    tree = tree_digest({k: (hashlib.sha256(v).hexdigest(), len(v)) for k, v in EVIL.items()})
    lock = Lockfile.load(tmp_path / "safehub.lock", missing_ok=True)
    lock.add_repo(LockedRepo(repo="acme/net", api=hub.api, ref="main", commit=commit,
                             archive_sha256="0" * 64, tree_sha256=tree))
    lock.save()
    return lock.path


def test_a_lockfile_entry_naming_a_fork_commit_is_refused(
        tmp_path: Path, hub: FakeHub, fork: str, make_fetcher: Callable[..., Fetcher],
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lockfile edited (in a pull request) to point acme/net:main at a fork's commit: the
    commit is checked as a SHA is, frozen or not, and nothing is recorded as acme's own."""
    monkeypatch.delenv("SAFEHUB_FORK_MARKER", raising=False)
    lock = _lock_to(tmp_path, hub, fork)
    for frozen in (True, False):
        with pytest.raises(IntegrityError, match="SH307"):
            make_fetcher(lockfile=lock, frozen=frozen).fetch_repo("acme/net:main")
    assert hub.count("/codeload/") == 0 and leftovers(cache_dir) == []
    # Nothing was recorded: the fork SHA is still refused without the lockfile.
    with pytest.raises(IntegrityError, match="SH307"):
        make_fetcher().fetch_repo(f"acme/net:{fork}")
    assert not list(cache_dir.glob("repos/**/*.json"))


def test_offline_a_lockfile_commit_needs_an_online_check_first(
        tmp_path: Path, hub: FakeHub, fork: str, make_fetcher: Callable[..., Fetcher],
        cache_dir: Path) -> None:
    # A fork's commit and acme's own (locked by name elsewhere): offline, with no record
    # of a check in this cache, neither can be confirmed.
    own_lock = Lockfile(tmp_path / "own.lock")
    make_fetcher(lockfile=own_lock, cache_dir=tmp_path / "ci").fetch_repo("acme/net:main")
    own_lock.save()
    for lock in (_lock_to(tmp_path, hub, fork), own_lock.path):
        with pytest.raises(FetchError, match="has not confirmed") as err:
            make_fetcher(lockfile=lock, offline=True).fetch_repo("acme/net:main")
        assert f"safehub lock --frozen --lockfile {lock}" in (err.value.fix or "")
    assert leftovers(cache_dir) == []
    # Online once: checked (one compare) and recorded; offline then serves it.
    before = hub.count("/api/repos/acme/net/compare/")
    online = make_fetcher(lockfile=own_lock.path, frozen=True).fetch_repo("acme/net:main")
    assert hub.count("/api/repos/acme/net/compare/") == before + 1
    offline = make_fetcher(lockfile=own_lock.path, offline=True).fetch_repo("acme/net:main")
    assert offline.from_cache and offline.commit == online.commit


def test_offline_a_cached_name_resolves_only_through_an_established_record(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    """Offline, ``acme/net:main`` resolves through the newest cached checkout of ``main``:
    only one recorded as the repo's own (a record written from a lockfile entry before
    those were checked says nothing about which repository the commit is in)."""
    import json

    sha = hub.add_repo("acme/net", {"hubconf.py": b"x = 1\n"})
    make_fetcher().fetch_repo("acme/net:main")
    assert make_fetcher(offline=True).fetch_repo("acme/net:main").commit == sha
    (record_path,) = (cache_dir / "repos").rglob(f"{sha}.json")
    record = json.loads(record_path.read_text())
    record_path.chmod(0o644)
    record["in_repo"] = False
    record_path.write_text(json.dumps(record))
    with pytest.raises(FetchError, match="cannot confirm"):
        make_fetcher(offline=True).fetch_repo("acme/net:main")
