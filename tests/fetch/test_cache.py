"""The cache: records, re-verification on every hit, and refreshes that never lose a good copy."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.errors import FetchError, IntegrityError, PolicyViolation
from safehub.fetch import Fetcher
from tests.fetch.fakehub import FakeHub, Fault
from tests.fetch.helpers import torch_bytes, write_policy


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_writable(path: Path) -> None:
    os.chmod(path, 0o644)


def test_file_record_holds_what_audit_needs(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    info = make_fetcher().fetch_url(url, repo="acme/net")
    record = json.loads(info.path.parent.with_suffix(".json").read_text())
    assert record["url"] == url and record["sha256"] == sha256(checkpoint)
    assert record["size"] == len(checkpoint) and record["repo"] == "acme/net"
    assert record["kind"] == "file" and record["schema_version"] == 1 and record["time"]
    assert info.path.parent.name == hashlib.sha256(url.encode()).hexdigest(), "keyed by URL"


def test_changed_cached_file_is_detected_on_the_next_hit(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    info = make_fetcher().fetch_url(url)
    make_writable(info.path)
    with open(info.path, "r+b") as fh:  # flip one byte somewhere in the middle
        fh.seek(len(checkpoint) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(IntegrityError) as err:
        make_fetcher().fetch_url(url)
    assert "SH400" in err.value.message and str(info.path) == err.value.subject
    assert hub.count("/models/") == 1, "a tampered entry is an error, not a silent re-download"


def test_symlink_in_place_of_a_cached_file_is_detected(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        checkpoint: bytes) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    info = make_fetcher().fetch_url(url)
    other = tmp_path / "other.pt"
    other.write_bytes(checkpoint)
    info.path.unlink()
    info.path.symlink_to(other)
    with pytest.raises(IntegrityError):
        make_fetcher().fetch_url(url)


def test_changed_checkout_is_detected_and_force_reload_repairs_it(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net", {"hubconf.py": b"ok = 1\n"})
    checkout = make_fetcher().fetch_repo(f"acme/net:{sha}")
    # A planted bytecode file would run instead of hubconf.py: an added file is tampering.
    os.chmod(checkout.path, 0o755)
    cache = checkout.path / "__pycache__"
    cache.mkdir()
    (cache / "hubconf.cpython-311.pyc").write_bytes(b"evil")
    with pytest.raises(IntegrityError) as err:
        make_fetcher().fetch_repo(f"acme/net:{sha}")
    assert "added: __pycache__/hubconf.cpython-311.pyc" in err.value.message
    assert "force_reload" in (err.value.fix or "")
    repaired = make_fetcher().fetch_repo(f"acme/net:{sha}", force_reload=True)
    assert not repaired.from_cache and not (repaired.path / "__pycache__").exists()
    assert make_fetcher().fetch_repo(f"acme/net:{sha}").from_cache


def test_modified_checkout_file_is_detected(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net", {"hubconf.py": b"ok = 1\n"})
    checkout = make_fetcher().fetch_repo(f"acme/net:{sha}")
    target = checkout.path / "hubconf.py"
    make_writable(target)
    target.write_bytes(b"import os; os.system('id')\n")
    with pytest.raises(IntegrityError) as err:
        make_fetcher().fetch_repo(f"acme/net:{sha}")
    assert "changed: hubconf.py" in err.value.message


def test_failed_refresh_leaves_the_previous_checkout_untouched(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher]) -> None:
    sha = hub.add_repo("acme/net", {"hubconf.py": b"ok = 1\n"})
    first = make_fetcher().fetch_repo(f"acme/net:{sha}")
    before = {p: p.read_bytes() for p in first.path.rglob("*") if p.is_file()}
    hub.faults[f"/codeload/acme/net/legacy.zip/{sha}"] = Fault(always_status=500)
    with pytest.raises(FetchError):
        make_fetcher().fetch_repo(f"acme/net:{sha}", force_reload=True)
    assert {p: p.read_bytes() for p in first.path.rglob("*") if p.is_file()} == before
    assert make_fetcher().fetch_repo(f"acme/net:{sha}").from_cache
    assert not list((first.path.parents[2].parent / "tmp").iterdir())


def test_new_pin_downloads_again_and_a_bad_download_keeps_the_old_copy(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        checkpoint: bytes) -> None:
    import torch

    url = hub.add_file("/models/net.pt", checkpoint)
    old = make_fetcher().fetch_url(url)
    updated = torch_bytes({"weight": torch.full((2, 3), 7.0)})
    hub.files["/models/net.pt"] = updated  # the publisher replaces the file...
    pinned = write_policy(tmp_path / "pin.toml", hub,
                          body=f'[downloads.pins]\n"{url}" = "{sha256(updated)}"\n')
    fresh = make_fetcher(policy=pinned).fetch_url(url)  # ...and the user pins the new one
    assert fresh.sha256 == sha256(updated) and not fresh.from_cache
    assert fresh.path == old.path and fresh.path.read_bytes() == updated

    hub.files["/models/net.pt"] = checkpoint  # the server regresses: the pin refuses it
    stricter = write_policy(tmp_path / "pin2.toml", hub,
                            body=f'[downloads.pins]\n"{url}" = "{"cd" * 32}"\n')
    with pytest.raises(IntegrityError):
        make_fetcher(policy=stricter).fetch_url(url)
    assert fresh.path.read_bytes() == updated, "the good copy is untouched"
    assert make_fetcher(policy=pinned).fetch_url(url).from_cache


def test_unreadable_record_is_tampering(hub: FakeHub, make_fetcher: Callable[..., Fetcher],
                                        checkpoint: bytes) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    info = make_fetcher().fetch_url(url)
    info.path.parent.with_suffix(".json").write_text("{not json")
    with pytest.raises(IntegrityError):
        make_fetcher().fetch_url(url)


@pytest.mark.parametrize("offline", [True, False])
def test_a_cache_hit_re_decides_the_redirect_hops_under_the_current_policy(
        tmp_path: Path, hub: FakeHub, other_hub: FakeHub, cache_dir: Path, checkpoint: bytes,
        offline: bool) -> None:
    # Policy A allows hub and other; hub/x.pt redirects to other/y.pt. Policy B drops
    # 'other': a fresh fetch would refuse the redirect, so the cached copy must be refused.
    from safehub.errors import PolicyViolation
    from tests.fetch.helpers import FAST

    final = other_hub.add_file("/y.pt", checkpoint)
    bounce = hub.add_file("/b.pt", b"", Fault(redirect=final))
    start = hub.add_file("/x.pt", b"", Fault(redirect=bounce))
    pol_a = write_policy(tmp_path / "a.toml", hub, other_hub)
    info = Fetcher(pol_a, cache_dir=cache_dir, http=FAST).fetch_url(start)
    record = json.loads(info.path.parent.with_suffix(".json").read_text())
    assert record["hops"] == [bounce, final] and record["final_url"] == final
    assert Fetcher(pol_a, cache_dir=cache_dir, http=FAST, offline=offline
                   ).fetch_url(start).from_cache
    pol_b = write_policy(tmp_path / "b.toml", hub)
    with pytest.raises(PolicyViolation, match="redirect from .* to " + final):
        Fetcher(pol_b, cache_dir=cache_dir, http=FAST, offline=offline).fetch_url(start)


@pytest.mark.parametrize("offline", [True, False])
def test_a_checkout_cache_hit_re_decides_the_archive_redirect_hops(
        tmp_path: Path, hub: FakeHub, other_hub: FakeHub, cache_dir: Path,
        offline: bool) -> None:
    # Policy A allows the archive host (codeload on another origin); policy B does not: a
    # fresh download would refuse the archive's redirect, so the cached checkout must be
    # refused too, naming the hop.
    from safehub.errors import PolicyViolation
    from tests.fetch.helpers import FAST

    sha = hub.add_repo("acme/net")
    other_hub.repos = hub.repos
    hub.archive_base = other_hub.url
    pol_a = write_policy(tmp_path / "a.toml", hub, other_hub)
    first = Fetcher(pol_a, cache_dir=cache_dir, http=FAST).fetch_repo(f"acme/net:{sha}")
    record = json.loads(next((cache_dir / "repos").rglob(f"{sha}.json")).read_text())
    hop = f"{other_hub.url}/codeload/acme/net/legacy.zip/{sha}"
    assert record["hops"] == [hop]
    again = Fetcher(pol_a, cache_dir=cache_dir, http=FAST, offline=offline
                    ).fetch_repo(f"acme/net:{sha}")
    assert again.path == first.path
    pol_b = write_policy(tmp_path / "b.toml", hub)
    with pytest.raises(PolicyViolation, match="redirect from .* to " + hop):
        Fetcher(pol_b, cache_dir=cache_dir, http=FAST, offline=offline
                ).fetch_repo(f"acme/net:{sha}")
    assert other_hub.count("/codeload/") == 1, "the refusal needs no request"


def test_file_name_pin_binds_the_url_whatever_file_name_is_given(
        hub: FakeHub, tmp_path: Path) -> None:
    """policy ``downloads.pins`` "net.pth" binds a download named net.pth by its URL
    (torch.hub's default, file_name=None) and under any file_name a caller (a sandboxed
    hubconf too) passes: tampered bytes from the server are refused every way."""
    good, evil = torch_bytes({"w": [1.0]}), torch_bytes({"w": [666.0]})
    url = hub.add_file("/models/net.pth", evil)
    pin = hashlib.sha256(good).hexdigest()
    policy = write_policy(tmp_path / "p.toml", hub, body=f'[downloads.pins]\n"net.pth" = "{pin}"\n')
    for i, kwargs in enumerate(({}, {"file_name": "net.pth"}, {"file_name": "other.pth"})):
        cache = tmp_path / f"cache{i}"
        with pytest.raises(IntegrityError, match=r"downloads\.pins\.net\.pth"):
            Fetcher(policy, cache_dir=cache).fetch_url(url, **kwargs)
        assert not list(cache.glob("files/*/*.json")), kwargs
    # A pin on the caller's file_name that disagrees with the URL's: refused before any
    # request.
    conflicting = write_policy(tmp_path / "c.toml", hub, body=(
        f'[downloads.pins]\n"net.pth" = "{pin}"\n"other.pth" = "{"ab" * 32}"\n'))
    before = hub.count()
    with pytest.raises(PolicyViolation, match="different digests"):
        Fetcher(conflicting, cache_dir=tmp_path / "c").fetch_url(url, file_name="other.pth")
    assert hub.count() == before
