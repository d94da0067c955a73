"""Unsigned files under a sharded signature are failures, however they reach the check.

model_signing lists no shard for an empty file, so an empty unlisted file matches a
sharded signature; nothing else may be skipped. A review planted a bug that skipped
unsigned files in shard mode; these tests pin each way an unsigned file can arrive:
in the tree, in a subfolder, and through a descriptor the caller supplies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from safehub.signing import sign, verify
from tests.signing.helpers import KeyPair, make_key, make_model


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path, "signer")


def _kinds(result: object) -> list[tuple[str, str | None]]:
    return sorted((f.kind.value, f.path) for f in result.failures)  # type: ignore[attr-defined]


@pytest.mark.parametrize("shard_size", [None, 512])
def test_unsigned_files_fail_in_every_serialization(tmp_path: Path, key: KeyPair,
                                                    shard_size: int | None) -> None:
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path, shard_size=shard_size)
    (m / "sub").mkdir(exist_ok=True)
    (m / "sub" / "extra.safetensors").write_bytes(b"\x00" * 2000)  # several shards' worth
    (m / "one-byte.bin").write_bytes(b"x")
    result = verify(m, public_key=key.public_path)
    assert not result.ok
    assert _kinds(result) == [("unsigned-file", "one-byte.bin"),
                              ("unsigned-file", "sub/extra.safetensors")]


def test_unsigned_descriptor_fails_under_a_sharded_signature(tmp_path: Path,
                                                            key: KeyPair) -> None:
    """A file the caller supplies a descriptor for (not in the tree) is checked too."""
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path, shard_size=512)
    outside = tmp_path / "extra.bin"
    outside.write_bytes(b"y" * 700)
    with open(outside, "rb") as fh:
        result = verify(m, public_key=key.public_path, open_files={"extra.bin": fh})
    assert _kinds(result) == [("unsigned-file", "extra.bin")]
