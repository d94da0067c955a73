"""Hostile repo archives: every member is validated before anything is written."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safehub._fetch.archive import extract_archive
from safehub._fetch.cache import CacheLayout
from safehub._fetch.github import RepoSpec
from safehub.errors import FetchError, IntegrityError
from safehub.fetch import ArchiveLimits, Fetcher
from tests.fetch.fakehub import FakeHub, make_tar, make_zip
from tests.fetch.helpers import leftovers

TOP = "acme-net-1234567"
FILES = {"hubconf.py": b"dependencies = []\n"}


def zip_member(name: str, data: bytes = b"x", *, mode: int | None = None) -> tuple[
        zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    return info, data


def tar_member(name: str, kind: bytes, *, linkname: str = "", data: bytes | None = None
               ) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if data is not None else 0
    return info, data


def quiet_zip(*args: object, **kwargs: object) -> bytes:
    with warnings.catch_warnings():  # zipfile warns about the duplicate we write on purpose
        warnings.simplefilter("ignore")
        return make_zip(*args, **kwargs)  # type: ignore[arg-type]


def serve(hub: FakeHub, archive: bytes) -> str:
    return hub.add_repo("acme/net", FILES, archive=archive)


def refused(hub: FakeHub, fetcher: Fetcher, archive: bytes, cache: Path) -> str:
    sha = serve(hub, archive)
    with pytest.raises(FetchError) as err:
        fetcher.fetch_repo(f"acme/net:{sha}")
    assert leftovers(cache) == [], "nothing partial is left in the cache"
    assert hub.count("/codeload/") == 1
    return err.value.diagnostics()


@pytest.mark.parametrize(("archive", "expect"), [
    (make_zip(TOP, FILES, raw=[zip_member(f"{TOP}/../../outside/evil.py")]), "'..'"),
    (make_zip(TOP, FILES, raw=[zip_member("../outside/evil.py")]), "'..'"),
    (make_zip(TOP, FILES, raw=[zip_member("/tmp/safehub-abs-evil.py")]), "absolute"),
    (make_zip(TOP, FILES, raw=[zip_member(f"{TOP}\\..\\evil.py")]), "backslash"),
    (make_zip(TOP, FILES, raw=[zip_member(f"{TOP}/link", b"/etc/passwd",
                                          mode=stat.S_IFLNK | 0o777)]), "symbolic link"),
    (make_zip(TOP, FILES, raw=[zip_member(f"{TOP}/fifo", b"", mode=stat.S_IFIFO | 0o644)]),
     "special file"),
    (quiet_zip(TOP, FILES, raw=[zip_member(f"{TOP}/hubconf.py", b"again")]), "duplicate"),
    (make_zip(TOP, FILES, raw=[zip_member("other-top/x.py")]), "outside the top-level"),
    (make_zip(TOP, {}, raw=[zip_member("loose.py")]), "outside the top-level"),
], ids=["zip-slip", "slip-at-top", "absolute", "backslash", "symlink", "fifo", "duplicate",
        "second-top", "loose-file"])
def test_hostile_zip_members_are_refused(
        archive: bytes, expect: str, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        cache_dir: Path) -> None:
    text = refused(hub, make_fetcher(), archive, cache_dir)
    assert expect in text and "unsafe archive" in text
    assert not Path("/tmp/safehub-abs-evil.py").exists()


@pytest.mark.parametrize(("member", "expect"), [
    (tar_member(f"{TOP}/hard", tarfile.LNKTYPE, linkname="/etc/passwd"), "hard link"),
    (tar_member(f"{TOP}/soft", tarfile.SYMTYPE, linkname="../../.."), "symbolic link"),
    (tar_member(f"{TOP}/null", tarfile.CHRTYPE), "device"),
    (tar_member(f"{TOP}/disk", tarfile.BLKTYPE), "device"),
    (tar_member(f"{TOP}/pipe", tarfile.FIFOTYPE), "fifo"),
    (tar_member("/etc/safehub-evil", tarfile.REGTYPE, data=b"x"), "absolute"),
    (tar_member(f"{TOP}/../evil", tarfile.REGTYPE, data=b"x"), "'..'"),
], ids=["hardlink", "symlink", "chardev", "blockdev", "fifo", "absolute", "dotdot"])
def test_hostile_tar_members_are_refused(
        member: tuple[tarfile.TarInfo, bytes | None], expect: str, hub: FakeHub,
        make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    text = refused(hub, make_fetcher(), make_tar(TOP, FILES, raw=[member]), cache_dir)
    assert expect in text


def test_zip_bomb_by_ratio_is_refused(hub: FakeHub, make_fetcher: Callable[..., Fetcher],
                                      cache_dir: Path) -> None:
    bomb = make_zip(TOP, {**FILES, "zeros.bin": bytes(32 << 20)})
    assert len(bomb) < 200 << 10
    text = refused(hub, make_fetcher(), bomb, cache_dir)
    assert "compression ratio" in text


def test_tar_bomb_by_ratio_stops_early(hub: FakeHub, make_fetcher: Callable[..., Fetcher],
                                       cache_dir: Path) -> None:
    bomb = make_tar(TOP, {**FILES, "zeros.bin": bytes(64 << 20)})
    text = refused(hub, make_fetcher(), bomb, cache_dir)
    assert "decompresses to more than" in text


def test_archive_over_the_size_limit_is_refused(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    noise = os.urandom(3 << 20)  # incompressible: the ratio is fine, the size is not
    limits = ArchiveLimits(max_total_size=2 << 20)
    for kind in ("zip", "tar"):
        archive = make_zip(TOP, {"big.bin": noise}) if kind == "zip" else make_tar(
            TOP, {"big.bin": noise})
        text = refused(hub, make_fetcher(archive_limits=limits), archive, cache_dir)
        assert "byte limit" in text or "-byte limit" in text
        hub.repos.clear()
        hub.log.clear()


def test_too_many_members_are_refused(hub: FakeHub, make_fetcher: Callable[..., Fetcher],
                                      cache_dir: Path) -> None:
    many = {f"f{i}.py": b"" for i in range(30)}
    text = refused(hub, make_fetcher(archive_limits=ArchiveLimits(max_members=20)),
                   make_zip(TOP, many), cache_dir)
    assert "more than 20 members" in text


def directory_only_zip(records: int, name_length: int = 8) -> bytes:
    """A zip whose central directory has ``records`` records, every one naming the same
    local header (a folder): a few bytes per record, however many there are."""
    import struct

    top = f"{TOP}/".encode()
    out = io.BytesIO()
    out.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(top), 0)
              + top)
    start = out.tell()
    for i in range(records):
        name = top + f"{i:0{name_length}x}".encode()
        out.write(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                              len(name), 0, 0, 0, 0, 0, 0) + name)
    size = out.tell() - start
    count = min(records, 0xFFFF)
    out.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, count, count, size, start, 0))
    return out.getvalue()


@pytest.mark.parametrize(("records", "limits", "expect"), [
    # A directory bigger than the limits' members could fill: refused on its size.
    (200_000, ArchiveLimits(max_members=1000, max_path_length=64), "central directory of"),
    # Within that size but over the member count: refused while walking the records.
    (1500, ArchiveLimits(max_members=100), "more than 100 members"),
])
def test_a_huge_central_directory_is_refused_before_zipfile_reads_it(
        records: int, limits: ArchiveLimits, expect: str, hub: FakeHub,
        make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    # zipfile reads the whole directory and makes an object per record before the member
    # count can be checked: 3 million records (196 MiB) took 25 s and 1.5 GiB of the
    # parent's memory; the archive cap (2 GiB) allows ten times that.
    import tracemalloc

    archive = directory_only_zip(records)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:  # a zip zipfile reads in full
        assert len(zf.infolist()) == records
    tracemalloc.start()
    try:
        text = refused(hub, make_fetcher(archive_limits=limits), archive, cache_dir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert expect in text
    # The download's own buffers take about 16 MiB; zipfile's reading of the first
    # case's records took 100 MiB.
    assert peak < len(archive) + (32 << 20), "the records were read into memory"


def extended_headers(count: int, size: int) -> bytes:
    """A tar whose one file follows ``count`` GNU long-name headers of ``size`` bytes each,
    each naming a file of the repository (each overrides the one before)."""
    blocks = []
    for i in range(count):
        info = tarfile.TarInfo("././@LongLink")
        info.type = tarfile.GNUTYPE_LONGNAME
        info.size = size
        data = f"{TOP}/x{i}.py".encode().ljust(size, b"\0")
        blocks += [info.tobuf(format=tarfile.GNU_FORMAT), data, b"\0" * (-size % 512)]
    last = tarfile.TarInfo(f"{TOP}/hubconf.py")
    blocks += [last.tobuf(format=tarfile.GNU_FORMAT), b"\0" * 1024]
    return b"".join(blocks)


@pytest.mark.parametrize(("count", "size", "expect"), [
    # tarfile reads a long name's data into memory whole (512 MiB took 1.6 GiB).
    (1, 2 << 20, "an extended header of 2097152 bytes"),
    # and reads the header after one recursively: a long run was a RecursionError.
    (5000, 100, "more than 16 extended headers in a row"),
])
def test_extended_tar_headers_are_bounded_before_tarfile_reads_them(
        count: int, size: int, expect: str, hub: FakeHub,
        make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    text = refused(hub, make_fetcher(), extended_headers(count, size), cache_dir)
    assert expect in text


def test_member_lying_about_its_size_is_refused(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    archive = bytearray(make_zip(TOP, {"a.py": b"A" * 1000}, comment=b""))
    # Shrink the declared size in the central directory (not the data): a lie.
    cd = archive.rfind(b"PK\x01\x02")
    archive[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    text = refused(hub, make_fetcher(), bytes(archive), cache_dir)
    assert "unsafe archive" in text


def test_archive_of_another_commit_is_an_integrity_error(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    wrong = make_zip(TOP, FILES, comment=b"f" * 40)
    sha = serve(hub, wrong)
    with pytest.raises(IntegrityError) as err:
        make_fetcher().fetch_repo(f"acme/net:{sha}")
    assert "f" * 40 in err.value.message
    assert leftovers(cache_dir) == []


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_tarballs_are_accepted_too(compression: str, hub: FakeHub,
                                   make_fetcher: Callable[..., Fetcher]) -> None:
    files = {**FILES, "pkg/__init__.py": b"", "pkg/deep/x.py": b"y = 2\n"}
    sha = "1" * 40
    hub.add_repo("acme/net", files, archive=make_tar(TOP, files, comment=sha,
                                                      compression=compression))
    sha = hub.repos["acme/net"].refs["main"]
    hub.repos["acme/net"].archives[sha] = make_tar(TOP, files, comment=sha,
                                                   compression=compression)
    checkout = make_fetcher().fetch_repo("acme/net:main")
    assert (checkout.path / "pkg/deep/x.py").read_bytes() == b"y = 2\n"


def test_torch_hub_deletes_outside_its_cache_and_safehub_does_not(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        cache_dir: Path) -> None:
    """torch.hub removes the folder named by the archive's FIRST entry before validating."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    archive = make_zip(TOP, FILES, raw=[])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../victim/", b"")  # first entry: torch.hub rm -rf's hub_dir/../victim
        with zipfile.ZipFile(io.BytesIO(archive)) as src:
            for info in src.infolist():
                zf.writestr(info, src.read(info))
    crafted = buf.getvalue()
    (tmp_path / "crafted.zip").write_bytes(crafted)
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()

    # Without safehub (a throwaway process; only torch's download function is replaced).
    script = textwrap.dedent("""
        import shutil, sys
        import torch.hub as th
        th.set_dir(sys.argv[2])
        th.download_url_to_file = lambda url, dst, *a, **k: shutil.copy(sys.argv[1], dst)
        try:
            th._get_cache_or_reload("acme/net:main", False, True, skip_validation=True)
        except Exception as exc:
            print("torch.hub raised", type(exc).__name__, exc)
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "crafted.zip"), str(hub_dir)],
                   check=True, capture_output=True, timeout=120)
    assert not victim.exists(), "torch.hub deleted a folder outside its cache"

    # With safehub: refused before anything is written or removed.
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    sha = serve(hub, crafted)
    with pytest.raises(FetchError):
        make_fetcher(hub_dir=hub_dir).fetch_repo(f"acme/net:{sha}")
    assert (victim / "important.txt").read_text() == "keep me"
    assert leftovers(cache_dir) == []


# --- properties -----------------------------------------------------------------------------

_PIECES = st.sampled_from(["a", "b.py", ".", "..", "", "/", "\\", "C:", "~", "\x00", "é", " "])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.lists(_PIECES, min_size=1, max_size=6).map("/".join),
                      min_size=1, max_size=4))
def test_extraction_never_writes_outside_its_folder(tmp_path: Path, names: list[str]) -> None:
    import uuid

    work = tmp_path / uuid.uuid4().hex
    work.mkdir()
    archive = work / "a.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        archive.write_bytes(make_zip(TOP, FILES, raw=[zip_member(n) for n in names]))
    dest = work / "dest"
    try:
        extracted = extract_archive(archive, dest, ArchiveLimits(), subject="test")
    except FetchError:
        assert not dest.exists(), "a refused archive leaves nothing"
    else:
        for rel in extracted.files:
            assert (dest / rel).resolve().is_relative_to(dest.resolve())
    assert sorted(p.name for p in work.iterdir()) == sorted(["a.zip"] + (
        ["dest"] if dest.exists() else []))


@given(spec=st.text(alphabet="ab/.:-_~\\ 0123456789", max_size=30))
def test_repo_specs_either_fail_or_stay_inside_the_cache(spec: str) -> None:
    try:
        parsed = RepoSpec.parse(spec)
    except FetchError:
        return
    root = Path("/cache-root")
    path = CacheLayout(root).repo_dir(parsed.owner, parsed.name, "a" * 40)
    assert os.path.normpath(path).startswith("/cache-root/repos/")
    assert ".." not in path.parts and (parsed.ref is None or ".." not in parsed.ref)


def test_global_pax_keys_are_bounded(hub: FakeHub, make_fetcher: Callable[..., Fetcher],
                                     cache_dir: Path) -> None:
    # tarfile copies the global pax keys into every member after them: 60,000 tiny keys
    # before 2,000 empty members (156 KB gzipped) took 3.7 GiB of the parent and 45 s,
    # growing with each member (50,000 members allowed).
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={f"k{i}": "v" for i in range(60_000)}) as tf:
        top = tarfile.TarInfo(TOP)
        top.type = tarfile.DIRTYPE
        tf.addfile(top)
        for i in range(2_000):
            tf.addfile(tarfile.TarInfo(f"{TOP}/f{i}"), io.BytesIO(b""))
    text = refused(hub, make_fetcher(), gzip.compress(buf.getvalue()), cache_dir)
    assert "a pax header of more than 64 fields" in text
