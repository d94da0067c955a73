"""Sharded hashing, single-file models, and hashing through the caller's descriptors."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from safehub.errors import SafehubError
from safehub.signing import load_signature, sign, verify
from tests.signing.helpers import KeyPair, make_key, make_model


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path, "signer")


def kinds(result: object) -> list[tuple[str, str | None]]:
    return [(f.kind.value, f.path) for f in result.failures]  # type: ignore[attr-defined]


def _payload(sig: Path) -> dict[str, object]:
    doc = json.loads(sig.read_text())
    return json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))  # type: ignore[no-any-return]


def test_sharded_resources_follow_model_signing(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m", weights=os.urandom(2500))
    (m / "empty.bin").write_bytes(b"")
    sig = sign(m, private_key=key.private_path, shard_size=1000)
    payload = _payload(sig)
    resources = {r["name"]: r for r in payload["predicate"]["resources"]}  # type: ignore[index]
    weights = (m / "model.pt").read_bytes()
    for start, end in ((0, 1000), (1000, 2000), (2000, 2500)):
        res = resources[f"model.pt:{start}:{end}"]
        assert res["algorithm"] == "sha256-sharded-1000"
        assert res["digest"] == hashlib.sha256(weights[start:end]).hexdigest()
    assert not any(n.startswith("empty.bin") for n in resources), "empty files have no shard"
    assert payload["predicate"]["serialization"]["shard_size"] == 1000  # type: ignore[index]
    assert verify(m, public_key=key.public_path).ok


def test_sharded_tamper_names_the_shard(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m", weights=os.urandom(2500))
    sign(m, private_key=key.private_path, shard_size=1000)
    data = bytearray((m / "model.pt").read_bytes())
    data[1500] ^= 0xFF
    (m / "model.pt").write_bytes(bytes(data))
    result = verify(m, public_key=key.public_path)
    assert kinds(result) == [("digest-mismatch", "model.pt")]
    assert "1000-2000" in result.failures[0].message
    (m / "model.pt").write_bytes(bytes(data[:2400]))
    result = verify(m, public_key=key.public_path)
    assert kinds(result) == [("digest-mismatch", "model.pt")]
    assert result.failures[0].expected == "2500 bytes"
    assert result.failures[0].actual == "2400 bytes"


def test_sharded_extra_files_still_fail(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path, shard_size=512)
    (m / "extra.bin").write_bytes(b"x")
    (m / "empty.bin").write_bytes(b"")  # data: what an (empty) shard list describes
    result = verify(m, public_key=key.public_path)
    assert kinds(result) == [("unsigned-file", "extra.bin")]


@pytest.mark.parametrize("method", ["files", "shards"])
def test_empty_new_code_is_unsigned_code_in_both_modes(tmp_path: Path, key: KeyPair,
                                                       method: str) -> None:
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path, shard_size=512 if method == "shards" else None)
    (m / "numpy.py").write_bytes(b"")  # shadows `import numpy` for code run from the folder
    (m / "sub").mkdir()
    (m / "sub" / "__init__.py").write_bytes(b"")
    for ignore in (False, True):
        result = verify(m, public_key=key.public_path, ignore_unsigned_files=ignore)
        # (A shard signature cannot be checked with ignore_unsigned_files at all, as in
        # model_signing: see test_differential.)
        whole = [("signature-invalid", None)] if ignore and method == "shards" else []
        assert sorted(kinds(result), key=str) == sorted(
            [*whole, ("unsigned-code", "numpy.py"), ("unsigned-code", "sub/__init__.py")],
            key=str), (ignore, result)


def test_shard_signing_refuses_empty_code(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    (m / "__init__.py").write_bytes(b"")
    with pytest.raises(SafehubError, match="empty code"):
        sign(m, private_key=key.private_path, shard_size=512)
    sign(m, private_key=key.private_path)
    assert verify(m, public_key=key.public_path).ok


def test_single_file_model(tmp_path: Path, key: KeyPair) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(5000))
    sig = sign(weights, private_key=key.private_path)
    assert sig == tmp_path / "model.safetensors.sig"
    payload = _payload(sig)
    assert [r["name"] for r in payload["predicate"]["resources"]] == ["."]  # type: ignore[index]
    result = verify(weights, public_key=key.public_path)
    assert result.ok and list(result.files) == ["."]
    weights.write_bytes(b"tampered")
    assert kinds(verify(weights, public_key=key.public_path)) == [("digest-mismatch", ".")]


def test_single_file_sharded(tmp_path: Path, key: KeyPair) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(3000))
    sign(weights, private_key=key.private_path, shard_size=1024)
    assert verify(weights, public_key=key.public_path).ok


def test_folder_signature_does_not_verify_a_single_file(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    sig = sign(m, private_key=key.private_path)
    result = verify(m / "model.pt", signature=sig, public_key=key.public_path)
    assert ("unsigned-file", ".") in kinds(result)
    assert ("missing-file", "model.pt") in kinds(result)


def test_open_files_hash_the_callers_descriptor(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path)
    original = (m / "model.pt").read_bytes()
    with open(m / "model.pt", "rb") as fh:
        fh.read(10)
        # Swap the path after the caller opened it (a rename over the file).
        evil = tmp_path / "evil.pt"
        evil.write_bytes(b"evil")
        os.replace(evil, m / "model.pt")
        # Hashing the path sees the swapped file...
        assert kinds(verify(m, public_key=key.public_path)) == [("digest-mismatch", "model.pt")]
        # ...hashing the caller's descriptor sees the bytes the caller will read.
        result = verify(m, public_key=key.public_path, open_files={"model.pt": fh})
        assert result.ok, result.failures
        assert fh.tell() == 10, "the caller's offset is left alone"
        fh.seek(0)
        assert fh.read() == original


def test_open_files_without_descriptor_and_raw_fds(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path)
    good = (m / "model.pt").read_bytes()
    result = verify(m, public_key=key.public_path,
                    open_files={"model.pt": io.BytesIO(b"different bytes")})
    assert kinds(result) == [("digest-mismatch", "model.pt")]
    buf = io.BytesIO(good)
    buf.seek(7)
    assert verify(m, public_key=key.public_path, open_files={"model.pt": buf}).ok
    assert buf.tell() == 7
    fd = os.open(m / "config.json", os.O_RDONLY)
    try:
        assert verify(m, public_key=key.public_path, open_files={"config.json": fd}).ok
    finally:
        os.close(fd)
    # A provided file for a path that is gone from disk still counts as present.
    (m / "README.md").rename(tmp_path / "README.md")
    with open(tmp_path / "README.md", "rb") as fh:
        assert verify(m, public_key=key.public_path, open_files={"README.md": fh}).ok
    weights = tmp_path / "single.bin"
    weights.write_bytes(b"abc" * 1000)
    sign(weights, private_key=key.private_path)
    assert verify(weights, public_key=key.public_path,
                  open_files={".": io.BytesIO(b"abc" * 1000)}).ok


def test_parallel_hashing_matches_sequential(tmp_path: Path, key: KeyPair) -> None:
    m = tmp_path / "many"
    rng = __import__("random").Random(7)
    expected = {}
    for i in range(60):
        path = m / f"d{i % 7}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(rng.choice([0, 1, 1000, 70_000, 1_100_000]))
        path.write_bytes(data)
        expected[path.relative_to(m).as_posix()] = "sha256:" + hashlib.sha256(data).hexdigest()
    sig1 = sign(m, private_key=key.private_path, signature_path=tmp_path / "a.sig",
                max_workers=1)
    sig8 = sign(m, private_key=key.private_path, signature_path=tmp_path / "b.sig",
                max_workers=8)
    assert _payload(sig1) == _payload(sig8)
    result = verify(m, signature=sig8, public_key=key.public_path, max_workers=8)
    assert dict(result.files) == expected
    signed = load_signature(sig1, public_key=key.public_path)
    assert signed.check(m, max_workers=3).ok


def test_sharded_parallel_matches_sequential(tmp_path: Path, key: KeyPair) -> None:
    big = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 123)
    big.write_bytes(data)
    sig = sign(big, private_key=key.private_path, shard_size=300_000, max_workers=6)
    resources = _payload(sig)["predicate"]["resources"]  # type: ignore[index]
    assert len(resources) == 11
    for res in resources:
        _, start, end = res["name"].split(":")
        assert res["digest"] == hashlib.sha256(data[int(start):int(end)]).hexdigest()


def test_hashing_streams_in_bounded_memory(tmp_path: Path, key: KeyPair) -> None:
    import tracemalloc

    weights = tmp_path / "large.bin"
    with open(weights, "wb") as fh:  # sparse: cheap to create, read back as zeros
        fh.truncate(96 * 1024 * 1024)
    sig = sign(weights, private_key=key.private_path, max_workers=2)
    tracemalloc.start()
    try:
        result = verify(weights, signature=sig, public_key=key.public_path, max_workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok
    assert result.files["."] == "sha256:" + hashlib.sha256(b"\0" * (96 << 20)).hexdigest()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while hashing 96 MiB"


def test_progress_is_reported_per_file(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path)
    seen: list[str] = []
    verify(m, public_key=key.public_path, progress=seen.append)
    assert sorted(seen) == ["README.md", "config.json", "hubconf.py", "model.pt",
                            "tiny/__init__.py"]


def test_hostile_shard_size_does_not_queue_a_task_per_byte(tmp_path: Path, key: KeyPair) -> None:
    from tests.signing.helpers import statement, write_forged

    m = tmp_path / "m"
    m.mkdir()
    data = os.urandom(1 << 20)
    (m / "w.bin").write_bytes(data)
    # Signed by the trusted key, but claiming one shard [0, size) with shard_size 1.
    ser = {"method": "shards", "hash_type": "sha256", "shard_size": 1,
           "allow_symlinks": False}
    res = [{"name": f"w.bin:0:{len(data)}", "algorithm": "sha256-sharded-1",
            "digest": hashlib.sha256(data).hexdigest()}]
    write_forged(m, statement(res, serialization=ser), key.key)
    result = verify(m, public_key=key.public_path)
    assert kinds(result) == [("digest-mismatch", "w.bin")]


def test_other_hashes(tmp_path: Path, key: KeyPair) -> None:
    from tests.signing.helpers import statement, write_forged

    m = tmp_path / "m"
    m.mkdir()
    (m / "w.bin").write_bytes(b"weights")
    ser = {"method": "files", "hash_type": "blake2b", "allow_symlinks": False}
    res = [{"name": "w.bin", "algorithm": "blake2b",
            "digest": hashlib.blake2b(b"weights").hexdigest()}]
    write_forged(m, statement(res, serialization=ser), key.key)
    result = verify(m, public_key=key.public_path)
    assert result.ok and result.files["w.bin"].startswith("blake2b:")
    ser["hash_type"] = "md5"
    res[0].update(algorithm="md5", digest=hashlib.md5(b"weights").hexdigest())
    write_forged(m, statement(res, serialization=ser), key.key)
    result = verify(m, public_key=key.public_path)
    assert kinds(result) == [("signature-invalid", None)]
    assert "md5" in result.failures[0].message


def test_open_files_cover_a_snapshot_of_links(tmp_path: Path, key: KeyPair) -> None:
    # A Hugging Face snapshot: every file is a link to a blob. Verifying in place refuses
    # the links; passing the blobs as descriptors verifies exactly those bytes.
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    blob = blobs / "0123abcd"
    os.replace(m / "model.pt", blob)
    os.symlink(blob, m / "model.pt")
    assert kinds(verify(m, public_key=key.public_path)) == [("unsafe-path", "model.pt")]
    with open(blob, "rb") as fh:
        result = verify(m, public_key=key.public_path, open_files={"model.pt": fh})
    assert result.ok, result.failures
