"""Offline mode: zero network (proved with an audit hook), served from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.errors import FetchError, PolicyViolation
from safehub.fetch import Fetcher
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import write_policy

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    events = []
    sys.addaudithook(lambda event, args: event.startswith("socket.") and events.append(event))
    import safehub as hub
    from safehub.errors import FetchError
    from safehub.fetch import Fetcher

    policy, url, missing_url, sha = sys.argv[1:5]
    out = {}
    fetcher = Fetcher(policy)
    out["offline"] = fetcher.offline
    out["branch"] = fetcher.fetch_repo("acme/net:main").commit
    out["sha"] = fetcher.fetch_repo("acme/net:" + sha).from_cache
    state = hub.load_state_dict_from_url(url, policy=policy)
    out["keys"] = sorted(state)
    for name, call in (("missing_url", lambda: fetcher.fetch_url(missing_url)),
                       ("missing_repo", lambda: fetcher.fetch_repo("acme/other:main"))):
        try:
            call()
        except FetchError as exc:
            out[name] = exc.diagnostics()
    out["socket_events"] = events
    print(json.dumps(out))
""")


def test_offline_opens_no_socket_and_serves_the_cache(
        hub: FakeHub, policy_file: Path, checkpoint: bytes) -> None:
    sha = hub.add_repo("acme/net")
    hub.add_repo("acme/other")
    url = hub.add_file("/models/net.pt", checkpoint)
    online = Fetcher(policy_file)  # the default cache, under TORCH_HOME (a tmp dir)
    online.fetch_repo("acme/net:main")
    online.fetch_url(url)
    before = hub.count()
    env = {**os.environ, "SAFEHUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(policy_file), url,
                           f"{hub.url}/models/missing.pt", sha],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["offline"] is True
    assert out["branch"] == sha, "a branch resolves to the commit cached for it"
    assert out["sha"] is True
    assert out["keys"] == ["bias", "weight"]
    assert "offline" in out["missing_url"] and "/models/missing.pt" in out["missing_url"]
    assert "acme/other:main" in out["missing_repo"]
    assert out["socket_events"] == [], "not a single socket was created"
    assert hub.count() == before, "the server saw no request"


def test_policy_offline_names_what_is_missing(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        checkpoint: bytes) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    policy = write_policy(tmp_path / "offline.toml", hub, body="offline = true\n")
    fetcher = make_fetcher(policy=policy)
    assert fetcher.offline
    with pytest.raises(FetchError) as err:
        fetcher.fetch_url(url)
    assert url in err.value.message and "offline" in err.value.message
    sha = "a" * 40
    with pytest.raises(FetchError) as err:
        fetcher.fetch_repo(f"acme/net:{sha}")
    assert sha in err.value.message
    assert hub.count() == 0


def test_offline_cache_hits_still_obey_the_url_rules(
        tmp_path: Path, hub: FakeHub, other_hub: FakeHub, cache_dir: Path,
        checkpoint: bytes) -> None:
    from tests.fetch.helpers import FAST

    url = other_hub.add_file("/models/net.pt", checkpoint)
    both = write_policy(tmp_path / "both.toml", hub, other_hub)
    Fetcher(both, cache_dir=cache_dir, http=FAST).fetch_url(url)
    assert Fetcher(both, cache_dir=cache_dir, offline=True).fetch_url(url).from_cache
    only_first = write_policy(tmp_path / "first.toml", hub)
    with pytest.raises(PolicyViolation):
        Fetcher(only_first, cache_dir=cache_dir, offline=True).fetch_url(url)


def test_environment_cannot_switch_offline_off(
        tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = write_policy(tmp_path / "offline.toml", hub, body="offline = true\n")
    monkeypatch.setenv("SAFEHUB_OFFLINE", "0")
    assert Fetcher(policy, offline=False).offline
