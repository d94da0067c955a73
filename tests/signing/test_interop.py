"""Interoperability with the reference tool, model_signing 1.1.1 (a test-only dependency).

safehub signs, model_signing verifies (its CLI in a subprocess, and its Python API);
model_signing signs with fresh keys, safehub verifies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from safehub.signing import sign, verify
from tests.signing.helpers import (
    DAY,
    NOW,
    file_resources,
    make_cert,
    make_key,
    make_model,
    make_pki,
    statement,
    write_forged,
)

model_signing = pytest.importorskip("model_signing", reason="model-signing (dev extra) missing")
pytest.importorskip("OpenSSL", reason="pyOpenSSL (dev extra) missing")


def reference_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model_signing", *map(os.fspath, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_reference_cli_verifies_safehub_key_signature(tmp_path: Path, curve: str) -> None:
    key = make_key(tmp_path, "k", curve)
    m = make_model(tmp_path / "m")
    (m / ".git").mkdir()
    (m / ".git" / "HEAD").write_text("ref\n")
    sig = sign(m, private_key=key.private_path)
    res = reference_cli("verify", "key", m, "--signature", sig, "--public_key", key.public_path)
    assert res.returncode == 0, res.stderr
    assert "Verification succeeded" in res.stdout
    # The reference tool is not a rubber stamp: it rejects a tampered model too.
    (m / "model.pt").write_bytes(b"tampered")
    res = reference_cli("verify", "key", m, "--signature", sig, "--public_key", key.public_path)
    assert res.returncode == 1


def test_reference_cli_verifies_safehub_certificate_signature(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", curve="P-384")
    m = make_model(tmp_path / "m")
    sig = sign(m, private_key=pki.leaf_key.private_path, certificate_chain=[pki.chain_path])
    res = reference_cli("verify", "certificate", m, "--signature", sig,
                        "--certificate_chain", pki.root_path)
    assert res.returncode == 0, res.stderr


def test_reference_cli_verifies_safehub_single_file_and_detached(tmp_path: Path) -> None:
    key = make_key(tmp_path, "k")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(4096))
    sig = sign(weights, private_key=key.private_path)
    res = reference_cli("verify", "key", weights, "--signature", sig,
                        "--public_key", key.public_path)
    assert res.returncode == 0, res.stderr
    m = make_model(tmp_path / "m")
    detached = sign(m, private_key=key.private_path, signature_path=tmp_path / "m.sig")
    res = reference_cli("verify", "key", m, "--signature", detached,
                        "--public_key", key.public_path)
    assert res.returncode == 0, res.stderr


def test_reference_api_verifies_safehub_sharded_signature(tmp_path: Path) -> None:
    # The reference CLI always re-hashes whole files, so shards go through its API,
    # which picks the serialization from the signature.
    key = make_key(tmp_path, "k")
    m = make_model(tmp_path / "m", weights=os.urandom(5000))
    sig = sign(m, private_key=key.private_path, shard_size=1024)
    model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=key.public_path).verify(m, sig)


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_safehub_verifies_reference_key_signatures(tmp_path: Path, curve: str) -> None:
    key = make_key(tmp_path, "k", curve)
    other = make_key(tmp_path, "other", curve)
    m = make_model(tmp_path / "m")
    sig = tmp_path / "model.sig"
    res = reference_cli("sign", "key", m, "--signature", sig, "--private_key", key.private_path)
    assert res.returncode == 0, res.stderr
    assert verify(m, signature=sig, public_key=key.public_path).ok
    assert not verify(m, signature=sig, public_key=other.public_path).ok


def test_safehub_verifies_reference_sharded_and_certificate_signatures(tmp_path: Path) -> None:
    key = make_key(tmp_path, "k", "P-384")
    m = make_model(tmp_path / "m", weights=os.urandom(3000))
    sharded = tmp_path / "sharded.sig"
    (model_signing.signing.Config().use_elliptic_key_signer(private_key=key.private_path)
     .set_hashing_config(model_signing.hashing.Config().use_shard_serialization(
         shard_size=700)).sign(m, sharded))
    result = verify(m, signature=sharded, public_key=key.public_path)
    assert result.ok, result.failures
    assert len(result.files["model.pt"].split(",")) == 5

    pki = make_pki(tmp_path / "pki", curve="P-521")
    cert_sig = m / "model.sig"
    res = reference_cli("sign", "certificate", m, "--signature", cert_sig,
                        "--private_key", pki.leaf_key.private_path,
                        "--signing_certificate", _leaf_file(tmp_path, pki),
                        "--certificate_chain", _intermediate_file(tmp_path, pki))
    assert res.returncode == 0, res.stderr
    assert verify(m, certificate_chain=pki.root_path).ok
    other = make_pki(tmp_path / "other", name="other")
    assert not verify(m, certificate_chain=other.root_path).ok


def _leaf_file(tmp: Path, pki: object) -> Path:
    from tests.signing.helpers import pem

    path = tmp / "leaf.pem"
    path.write_bytes(pem(pki.leaf))  # type: ignore[attr-defined]
    return path


def _intermediate_file(tmp: Path, pki: object) -> Path:
    from tests.signing.helpers import pem

    path = tmp / "intermediate.pem"
    path.write_bytes(pem(pki.intermediate))  # type: ignore[attr-defined]
    return path


def test_expired_certificate_passes_the_reference_but_not_safehub(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    m = make_model(tmp_path / "m")
    expired = make_cert(pki.leaf_key.key, "expired signer", issuer_key=pki.intermediate_key,
                        issuer_cert=pki.intermediate, not_before=NOW - 20 * DAY,
                        not_after=NOW - 10 * DAY)
    sig = write_forged(m, statement(file_resources(m)), pki.leaf_key.key,
                       certificates=[expired, pki.intermediate])
    # The reference tool checks the chain at the certificate's notBefore: it accepts.
    model_signing.verifying.Config().use_certificate_verifier(
        certificate_chain=[pki.root_path]).verify(m, sig)
    result = verify(m, certificate_chain=pki.root_path)
    assert [f.kind.value for f in result.failures] == ["certificate-invalid"]
    assert "expired" in result.failures[0].message
