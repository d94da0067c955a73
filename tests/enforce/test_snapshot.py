"""One immutable snapshot per load: what was hashed and scanned is what is loaded.

A writer thread rewrites the file in place, alternating between a clean checkpoint (A)
and one of the same size that the scanner refuses and torch's weights-only loader
refuses too (B, it holds a fractions.Fraction, outside the allowlist). If a load ever
read other bytes than the scan, torch's loader would meet B after a scan of A and refuse
it: that error (or a hash, scan and load that disagree) is what these tests look for,
over thousands of loads.
"""

from __future__ import annotations

import fractions
import hashlib
import io
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import safehub
from safehub._snapshot import Snapshot
from safehub.errors import IntegrityError, PolicyViolation, UnsafeModel


def _bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def same_size_variants() -> tuple[bytes, bytes]:
    """(A, B): A clean, B refused by the scanner and by torch's loader; same length."""
    bad = _bytes({"w": torch.zeros(4), "ns": fractions.Fraction(1, 10)})
    for pad in range(0, 2048):
        good = _bytes({"w": torch.zeros(4), "p": "x" * pad})
        if len(good) == len(bad):
            return good, bad
    raise AssertionError("no padding gives equal sizes")


@contextmanager
def rewriting(path: Path, good: bytes, bad: bytes) -> Iterator[Counter[str]]:
    """Rewrite ``path`` in place (same inode, no truncation) until the block ends."""
    os.chmod(path, 0o644)
    stop = threading.Event()
    writes: Counter[str] = Counter()

    def writer() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            while not stop.is_set():
                os.pwrite(fd, bad, 0)
                os.pwrite(fd, good, 0)
                writes["rounds"] += 1
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield writes
    finally:
        stop.set()
        thread.join(30)
    path.write_bytes(good)


def _race(load: Callable[[], Any], count: int, allowed: tuple[type[BaseException], ...]
          ) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for _ in range(count):
        try:
            state = load()
        except allowed as exc:
            outcomes[type(exc).__name__] += 1
            continue
        except Exception as exc:  # anything else means the loader read other bytes
            outcomes[f"BAD {type(exc).__name__}: {str(exc)[:200]}"] += 1
            continue
        outcomes["A" if set(state) == {"w", "p"} else f"BAD content {sorted(state)}"] += 1
    return outcomes


def _bad(outcomes: Counter[str]) -> list[str]:
    return [k for k in outcomes if k.startswith("BAD")]


def test_enforced_loads_read_only_the_scanned_bytes_while_the_file_is_rewritten(
        tmp_path: Path) -> None:
    good, bad = same_size_variants()
    path = tmp_path / "ckpt.pt"
    path.write_bytes(good)
    with safehub.enforce("default"), rewriting(path, good, bad) as writes:
        outcomes = _race(lambda: torch.load(path), 2000, (PolicyViolation,))
    assert writes["rounds"] > 0
    assert not _bad(outcomes), outcomes
    assert outcomes["A"] + outcomes["PolicyViolation"] == 2000


def test_a_file_object_whose_reads_differ_is_read_once() -> None:
    good, bad = same_size_variants()

    class Flaky(io.RawIOBase):
        """The first pass over it reads A; every later pass reads B."""

        def __init__(self) -> None:
            self.passes = 0
            self.pos = 0

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def seek(self, offset: int, whence: int = 0) -> int:
            end = len(good)
            new = {0: offset, 1: self.pos + offset, 2: end + offset}[whence]
            if new == 0:
                self.passes += 1
            self.pos = new
            return new

        def tell(self) -> int:
            return self.pos

        def readinto(self, buf: Any) -> int:
            data = (good if self.passes <= 1 else bad)[self.pos:self.pos + len(buf)]
            buf[:len(data)] = data
            self.pos += len(data)
            return len(data)

    with safehub.enforce("default"):
        state = torch.load(Flaky())  # type: ignore[arg-type]
    assert set(state) == {"w", "p"}


def test_hub_cache_hits_load_only_the_hashed_bytes(tmp_path: Path,
                                                   isolated_torch_home: Path) -> None:
    from tests.fetch.fakehub import FakeHub
    from tests.fetch.helpers import write_policy

    good, bad = same_size_variants()
    server = FakeHub("127.0.0.1")
    try:
        url = server.add_file("/models/ckpt.pt", good)
        policy = safehub.policy.load_policy(write_policy(tmp_path / "p.toml", server))
        assert set(safehub.load_state_dict_from_url(url, policy=policy)) == {"w", "p"}
        cached = [p for p in (isolated_torch_home / "hub" / "safehub" / "files").rglob("*")
                  if p.is_file() and p.read_bytes() == good]
        assert len(cached) == 1, cached
        with rewriting(cached[0], good, bad) as writes:
            outcomes = _race(lambda: safehub.load_state_dict_from_url(url, policy=policy),
                             1000, (IntegrityError,))
    finally:
        server.close()
    assert writes["rounds"] > 0
    # A changed cache entry is an IntegrityError (hash first); nothing else may happen.
    assert not _bad(outcomes), outcomes
    assert outcomes["A"] + outcomes["IntegrityError"] == 1000


@pytest.mark.slow
def test_convert_converts_only_the_hashed_and_scanned_bytes(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from safehub.convert import convert
    from safehub.errors import SandboxError

    good, bad = same_size_variants()
    good_sha = hashlib.sha256(good).hexdigest()
    src = tmp_path / "ckpt.pt"
    src.write_bytes(good)
    outcomes: Counter[str] = Counter()
    with rewriting(src, good, bad) as writes:
        for i in range(15):
            out = tmp_path / f"out{i}.safetensors"
            try:
                result = convert(src, out)
            except UnsafeModel:
                outcomes["UnsafeModel"] += 1
                assert not out.exists()
                continue
            except SandboxError as exc:
                outcomes[f"BAD SandboxError {exc.message[:200]}"] += 1
                continue
            assert result.source_sha256 == good_sha
            assert torch.equal(load_file(out)["w"], torch.zeros(4))
            outcomes["A"] += 1
    assert writes["rounds"] > 0
    assert not _bad(outcomes), outcomes


def test_snapshot_is_sealed_and_independent_of_the_source(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"first")
    with Snapshot.of_path(path) as snap:
        path.write_bytes(b"second, longer")
        assert snap.open().read() == b"first"
        assert snap.sha256 == hashlib.sha256(b"first").hexdigest()
        if snap.fd is not None:
            with pytest.raises(OSError):
                os.pwrite(snap.fd, b"X", 0)  # sealed: nobody can change it
            with pytest.raises(OSError):
                os.ftruncate(snap.fd, 1)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(safehub.errors.SafehubError, match="regular"):
        Snapshot.of_path(fifo)


def test_a_file_object_with_unflushed_writes_is_snapshotted_whole(tmp_path: Path) -> None:
    with open(tmp_path / "f.bin", "w+b") as fh:
        fh.write(b"written but still buffered")
        with Snapshot.of_fileobj(fh, "f.bin") as snap:
            assert snap.open().read() == b"written but still buffered"
