"""One identity per repository over the loopback fake GitHub (which, like GitHub, finds
``owner/name`` case-insensitively and answers with the repository's ``full_name``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.errors import IntegrityError, InvalidIdentifier, PolicyViolation
from safehub.fetch import Fetcher, Lockfile
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import FAST, leftovers

HUBCONF = b"dependencies = []\ndef resnet18():\n    return 1\ndef evil():\n    return 2\n"


def _policy(path: Path, hub: FakeHub, *, extends: str = "default", trust: str = "",
            body: str = "") -> Path:
    path.write_text(
        f'schema = 1\nname = "test"\nextends = "{extends}"\n'
        'loosen = ["downloads.allow_http_loopback", "downloads.github_api", "trust.owners", '
        '"downloads.allowed_urls", "repos"]\n'
        f"[trust]\n{trust}\n"
        f'[downloads]\nallow_http_loopback = true\ngithub_api = "{hub.api}"\n'
        f'allowed_urls = ["{hub.url}/"]\n{body}', encoding="utf-8")
    return path


def test_case_variant_is_held_to_the_exact_rule(tmp_path: Path, hub: FakeHub,
                                               cache_dir: Path) -> None:
    """`pytorch/Vision:main` + entrypoint `evil` vs `[repos."pytorch/vision"]` (pin and
    entrypoint list): the rule applies, whatever the spelling."""
    reviewed = hub.add_repo("pytorch/vision", {"hubconf.py": HUBCONF})
    hub.add_repo("pytorch/vision", {"hubconf.py": HUBCONF + b"# moved on\n"})  # main moves
    policy = _policy(tmp_path / "p.toml", hub, trust='owners = ["pytorch"]',
                     body=f'[repos."pytorch/vision"]\ncommit = "{reviewed}"\n'
                     'entrypoints = ["resnet18"]\n')
    fetcher = Fetcher(policy, cache_dir=cache_dir, http=FAST)
    with pytest.raises(PolicyViolation) as err:
        fetcher.fetch_repo("pytorch/Vision:main", entrypoint="evil")
    assert "entrypoint 'evil'" in err.value.message
    assert hub.count() == 0, "denied before any request"
    with pytest.raises(IntegrityError):  # an allowed entrypoint still gets the pinned commit
        fetcher.fetch_repo("PyTorch/VISION:main", entrypoint="resnet18")
    assert leftovers(cache_dir) == []
    pinned = fetcher.fetch_repo("PYTORCH/vision", entrypoint="resnet18")
    assert pinned.commit == reviewed
    assert pinned.path == cache_dir / "repos" / "pytorch" / "vision" / reviewed


def test_denied_owner_in_another_case_is_denied_under_permissive(
        tmp_path: Path, hub: FakeHub, cache_dir: Path) -> None:
    hub.add_repo("EvilCorp/model")
    policy = _policy(tmp_path / "p.toml", hub, extends="permissive",
                     trust='denied_owners = ["evilcorp"]')
    with pytest.raises(PolicyViolation) as err:
        Fetcher(policy, cache_dir=cache_dir, http=FAST).fetch_repo("EvilCorp/model:main",
                                                                   trust_repo=True)
    assert "denied" in err.value.message
    assert hub.count() == 0 and leftovers(cache_dir) == []


@pytest.mark.parametrize("spec", ["acme/model\n", "acme/model\n:main", "acme/model:main\n",
                                  "acme/../x", "acme/..", "acme/model.git"])
def test_malformed_name_gets_no_request_and_no_cache_folder(
        spec: str, hub: FakeHub, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    hub.add_repo("acme/model")
    with pytest.raises(InvalidIdentifier) as err:
        make_fetcher().fetch_repo(spec)
    assert "\n" not in (err.value.subject or "")
    assert hub.count() == 0
    assert not (cache_dir / "repos").exists() or not any((cache_dir / "repos").rglob("*"))


def test_short_sha_answered_with_another_commit_is_refused(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    reviewed = hub.add_repo("acme/net", {"hubconf.py": HUBCONF})
    # A tag named like the reviewed commit's prefix, pointing at another commit: the API
    # resolves the ref to the tag.
    evil = hub.add_repo("acme/net", {"hubconf.py": b"import os\n"}, ref=reviewed[:7])
    assert evil != reviewed
    with pytest.raises(IntegrityError) as err:
        make_fetcher().fetch_repo(f"acme/net:{reviewed[:7]}")
    assert evil in err.value.message and "tags/" in (err.value.fix or "")
    assert hub.count("/codeload/") == 0 and leftovers(cache_dir) == []
    assert make_fetcher().fetch_repo(f"acme/net:{reviewed}").commit == reviewed


def test_api_answer_for_another_repository_is_refused(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    hub.add_repo("mallory/net")
    hub.moved["acme/net"] = "mallory/net"  # renamed or transferred: another identity
    with pytest.raises(InvalidIdentifier) as err:
        make_fetcher().fetch_repo("acme/net:main")
    assert "mallory/net" in err.value.message
    assert hub.count("/codeload/") == 0 and leftovers(cache_dir) == []


def test_one_checkout_per_repository_shown_as_full_name(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        cache_dir: Path) -> None:
    sha = hub.add_repo("Acme/Net", tags=("v1",))
    lock = Lockfile(tmp_path / "safehub.lock")
    first = make_fetcher(lockfile=lock).fetch_repo("acme/net:v1")
    assert (first.repo, first.commit) == ("Acme/Net", sha)
    assert first.path == cache_dir / "repos" / "acme" / "net" / sha
    assert [e.repo for e in lock.repos.values()] == ["Acme/Net"]
    lock.save()
    frozen = make_fetcher(lockfile=tmp_path / "safehub.lock", frozen=True)
    again = frozen.fetch_repo("ACME/NET:v1")
    assert again.from_cache and again.path == first.path and again.repo == "Acme/Net"
    assert hub.count("/codeload/") == 1
