"""Resolving owner/repo[:ref] to a commit through the (fake) GitHub API, and checkouts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.errors import FetchError, IntegrityError, PolicyViolation
from safehub.fetch import Fetcher
from tests.fetch.fakehub import FakeHub, Fault
from tests.fetch.helpers import write_policy

HUBCONF = b"dependencies = []\ndef net():\n    return 1\n"


def test_branch_tag_and_sha_resolve_to_the_same_checkout(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net", {"hubconf.py": HUBCONF, "pkg/mod.py": b"x = 1\n"},
                       ref="main", tags=("v1.0",))
    fetcher = make_fetcher()
    by_branch = fetcher.fetch_repo("acme/net:main")
    assert by_branch.commit == sha and not by_branch.from_cache
    assert (by_branch.path / "hubconf.py").read_bytes() == HUBCONF
    assert (by_branch.path / "pkg" / "mod.py").read_bytes() == b"x = 1\n"
    assert len(by_branch.archive_sha256) == 64 and len(by_branch.tree_sha256) == 64
    by_tag = fetcher.fetch_repo("acme/net:v1.0")
    assert (by_tag.commit, by_tag.path, by_tag.from_cache) == (sha, by_branch.path, True)
    by_short = fetcher.fetch_repo(f"acme/net:{sha[:7]}")
    assert by_short.commit == sha
    # The checkout is read-only, files and folders.
    assert not os.access(by_branch.path / "hubconf.py", os.W_OK) or os.geteuid() == 0
    assert (by_branch.path / "hubconf.py").stat().st_mode & 0o222 == 0
    assert by_branch.path.stat().st_mode & 0o222 == 0
    assert hub.count("/codeload/") == 1, "one archive download for one commit"


def test_default_branch_comes_from_the_api_not_a_probe(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net", ref="develop", default_branch="develop")
    checkout = make_fetcher().fetch_repo("acme/net")
    assert checkout.commit == sha and checkout.ref is None
    paths = [r.path for r in hub.requests_to("/api/")]
    assert paths[:2] == ["/api/repos/acme/net", "/api/repos/acme/net/commits/develop"]
    assert not any(p.endswith(("/main", "/master")) for p in paths), "no main/master probe"


def test_cached_full_sha_makes_zero_requests(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net")
    first = make_fetcher().fetch_repo(f"acme/net:{sha}")
    assert hub.count("/api/repos/acme/net/commits") == 0, "a full SHA is not resolved"
    before = hub.count()
    again = make_fetcher().fetch_repo(f"acme/net:{sha}")
    assert hub.count() == before, "a cached full SHA needs no request at all"
    assert again.from_cache and again.path == first.path


def test_policy_commit_pin_is_used_without_a_ref_and_enforced_with_one(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    old = hub.add_repo("acme/net", {"hubconf.py": b"old = 1\n"})
    new = hub.add_repo("acme/net", {"hubconf.py": b"new = 1\n"})  # main moves on
    policy = write_policy(tmp_path / "pinned.toml", hub,
                          body=f'[repos."acme/net"]\ncommit = "{old}"\n')
    fetcher = make_fetcher(policy=policy)
    checkout = fetcher.fetch_repo("acme/net")
    assert checkout.commit == old
    assert hub.count("/api/repos/acme/net/commits") == 0, "the pin needs no resolution"
    # The pin must be the repo's own commit (not a fork's): the repo and one compare.
    assert hub.count("/api/") == 3 and hub.count("/api/repos/acme/net/compare/") == 1
    before = hub.count()
    assert make_fetcher(policy=policy).fetch_repo("acme/net").from_cache
    assert hub.count() == before, "a cached, established pin needs no request at all"
    with pytest.raises(IntegrityError) as err:
        fetcher.fetch_repo("acme/net:main")
    assert new in err.value.message and old in err.value.message
    with pytest.raises(PolicyViolation):  # an explicit different SHA is denied by the policy
        fetcher.fetch_repo(f"acme/net:{new}")


def test_policy_denial_comes_before_any_request(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    hub.add_repo("mallory/evil")
    with pytest.raises(PolicyViolation) as err:
        make_fetcher().fetch_repo("mallory/evil")
    assert "mallory/evil" in err.value.diagnostics()
    assert hub.count() == 0


@pytest.mark.parametrize("spec", ["acme", "acme/net:..", "acme/..", "acme/net:-x",
                                  "acme/net:a..b", "../etc:main", "acme/net:/abs"])
def test_malformed_specs_are_refused(spec: str, make_fetcher: Callable[..., Fetcher],
                                     hub: FakeHub) -> None:
    with pytest.raises(FetchError):
        make_fetcher().fetch_repo(spec)
    assert hub.count() == 0


def test_unknown_repo_and_ref_name_the_input(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    hub.add_repo("acme/net")
    fetcher = make_fetcher()
    with pytest.raises(FetchError) as err:
        fetcher.fetch_repo("acme/missing:main")
    text = err.value.diagnostics()
    assert "acme/missing:main was not found" in text and "GITHUB_TOKEN" in text
    with pytest.raises(FetchError) as err:
        fetcher.fetch_repo("acme/net:nosuchbranch")
    assert "nosuchbranch" in err.value.diagnostics()


def test_rate_limit_says_when_it_resets_and_that_a_token_helps(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    hub.add_repo("acme/net")
    reset = int(time.time()) + 1800
    hub.faults["/api/repos/acme/net/commits/main"] = Fault(rate_limit_reset=reset)
    with pytest.raises(FetchError) as err:
        make_fetcher().fetch_repo("acme/net:main")
    text = err.value.diagnostics()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(reset))
    assert "rate limit" in text and stamp in text and "UTC" in text
    assert "GITHUB_TOKEN" in text
    assert hub.count("/api/repos/acme/net/commits/main") == 1, "a rate limit is not retried"


def test_token_goes_to_the_api_host_and_never_to_another_host_after_a_redirect(
        tmp_path: Path, hub: FakeHub, other_hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
        cache_dir: Path) -> None:
    from tests.fetch.helpers import FAST

    sha = hub.add_repo("acme/private")
    hub.api_token = "s3cret"  # the API answers 404 without it, like GitHub for private repos
    other_hub.repos = hub.repos  # the archive host (codeload) is another origin
    hub.archive_base = other_hub.url
    policy = write_policy(tmp_path / "p.toml", hub, other_hub)
    monkeypatch.setenv("GITHUB_TOKEN", "s3cret")
    checkout = Fetcher(policy, cache_dir=cache_dir, http=FAST).fetch_repo("acme/private:main")
    assert checkout.commit == sha
    api_requests = hub.requests_to("/api/")
    assert api_requests and all(r.headers.get("authorization") == "Bearer s3cret"
                                for r in api_requests)
    assert other_hub.count("/codeload/") == 1
    assert all("authorization" not in r.headers for r in other_hub.log), \
        "the token must not follow a redirect to another host"


def test_weights_get_no_token_even_on_the_origin_a_token_names(
        tmp_path: Path, hub: FakeHub, other_hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
        cache_dir: Path, checkpoint: bytes) -> None:
    # Tokens go with API and archive requests only: a weights URL is chosen by repo code.
    from tests.fetch.helpers import FAST

    url = other_hub.add_file("/w/model.pt", checkpoint, Fault(require_token="tok2"))
    redirect = hub.add_file("/r/model.pt", b"", Fault(redirect=url))
    policy = write_policy(tmp_path / "p.toml", hub, other_hub)
    monkeypatch.setenv("SAFEHUB_TOKEN_W", "tok2")
    monkeypatch.setenv("SAFEHUB_TOKEN_W_ORIGIN", other_hub.url)
    monkeypatch.setenv("GITHUB_TOKEN", "github-token")
    fetcher = Fetcher(policy, cache_dir=cache_dir, http=FAST)
    for start in (url, redirect):
        with pytest.raises(FetchError):
            fetcher.fetch_url(start)
    assert all("authorization" not in r.headers for r in [*hub.log, *other_hub.log])


def test_model_files_in_a_checkout_are_scanned_and_decided(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes) -> None:
    import pickle

    clean = hub.add_repo("acme/net", {"hubconf.py": HUBCONF, "weights/net.pt": checkpoint})
    checkout = make_fetcher().fetch_repo(f"acme/net:{clean}")
    assert [r.path.rsplit("/", 1)[-1] for r in checkout.reports] == ["net.pt"]
    # A pickle that runs a command, disguised as text, inside the repo.
    evil = hub.add_repo("acme/net", {"hubconf.py": HUBCONF,
                                     "notes.txt": pickle.dumps(os.system)}, ref="evil")
    with pytest.raises(PolicyViolation) as err:
        make_fetcher().fetch_repo(f"acme/net:{evil}")
    assert "notes.txt" in err.value.diagnostics() and "SH100" in err.value.diagnostics()


def test_source_files_starting_with_opcode_letters_do_not_block_a_checkout(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes) -> None:
    """``import os`` reads as protocol 0 INST, ``checkpoint:`` as GLOBAL: no loader gets
    anywhere with them (tests/scanner/test_text_files.py), so they are not model files."""
    files = {"hubconf.py": b"import os\nimport torch\n\ndependencies = ['torch']\n",
             "models/net.py": b"class Net:\n    pass\n",
             "configs/base.yaml": b"checkpoint: weights/net.pt\nlr: 0.1\n",
             "scripts/run.sh": b"cd /opt\nif [ -n \"$X\" ]; then\n  echo hi\nfi\n",
             "requirements.txt": b"Flask==2.0\nSphinx\n",
             "weights/net.pt": checkpoint}
    sha = hub.add_repo("acme/net", files)
    checkout = make_fetcher().fetch_repo(f"acme/net:{sha}")
    assert [r.path.rsplit("/", 1)[-1] for r in checkout.reports] == ["net.pt"]
    # Text that a loader does run stays refused, whatever its name.
    evil = hub.add_repo("acme/net", {**files, "configs/evil.yaml":
                                     b"cos\nsystem\n(S'echo hi'\ntR."}, ref="evil")
    with pytest.raises(PolicyViolation) as err:
        make_fetcher().fetch_repo(f"acme/net:{evil}")
    assert "evil.yaml" in err.value.diagnostics() and "SH100" in err.value.diagnostics()
