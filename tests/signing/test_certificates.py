"""The certificate method: chains built here, validity periods checked at verification time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from safehub.errors import SafehubError
from safehub.signing import TrustedCertificates, load_signature, sign, verify
from tests.signing.helpers import (
    DAY,
    NOW,
    file_resources,
    make_cert,
    make_key,
    make_model,
    make_pki,
    pem,
    statement,
    write_forged,
)


def kinds(result: object) -> list[tuple[str, str | None]]:
    return [(f.kind.value, f.path) for f in result.failures]  # type: ignore[attr-defined]


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_chain_to_trusted_root(tmp_path: Path, curve: str) -> None:
    pki = make_pki(tmp_path / "pki", curve=curve)
    m = make_model(tmp_path / "m")
    sign(m, private_key=pki.leaf_key.private_path, certificate_chain=[pki.chain_path])
    result = verify(m, certificate_chain=pki.root_path)
    assert result.ok, result.failures
    assert result.signer is not None and result.signer.kind == "certificate"
    assert result.signer.subject == pki.leaf.subject.rfc4514_string()
    assert result.signer.chain[-1] == pki.root.subject.rfc4514_string()
    # As model_signing (OpenSSL without partial chains): the path must end at a trusted
    # self-signed root, so the intermediate alone is not enough; beside the root it helps.
    (tmp_path / "inter.pem").write_bytes(pem(pki.intermediate))
    result = verify(m, certificate_chain=tmp_path / "inter.pem")
    assert kinds(result) == [("certificate-invalid", None)]
    assert "self-signed root" in result.failures[0].message
    (tmp_path / "both.pem").write_bytes(pem(pki.intermediate, pki.root))
    assert verify(m, certificate_chain=tmp_path / "both.pem").ok


def test_unrelated_ca_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="other")
    m = make_model(tmp_path / "m")
    sign(m, private_key=pki.leaf_key.private_path, certificate_chain=[pki.chain_path])
    result = verify(m, certificate_chain=other.root_path)
    assert kinds(result) == [("certificate-invalid", None)]
    assert result.failures[0].rule_id == "SH306"


def _signed_with_leaf(tmp_path: Path, **leaf: object) -> tuple[Path, Path]:
    """A model signed (by a hand-made bundle) with a leaf of the given properties."""
    pki = make_pki(tmp_path / "pki")
    m = make_model(tmp_path / "m")
    write_forged(m, statement(file_resources(m)), pki.leaf_key.key,
                 certificates=[make_cert(pki.leaf_key.key, "custom signer",
                                         issuer_key=pki.intermediate_key,
                                         issuer_cert=pki.intermediate, **leaf),  # type: ignore[arg-type]
                               pki.intermediate])
    return m, pki.root_path


@pytest.mark.parametrize(("leaf", "words"), [
    ({"not_before": NOW - 30 * DAY, "not_after": NOW - DAY}, "expired"),
    ({"not_before": NOW + DAY, "not_after": NOW + 30 * DAY}, "not valid yet"),
    ({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, "codeSigning"),
    ({"eku": [], "key_usage": False}, "allows neither digitalSignature"),
])
def test_leaf_validity_and_usage(tmp_path: Path, leaf: dict[str, object], words: str) -> None:
    m, root = _signed_with_leaf(tmp_path, **leaf)
    result = verify(m, certificate_chain=root)
    assert kinds(result) == [("certificate-invalid", None)]
    assert words in result.failures[0].message


def test_validity_is_checked_at_the_given_time(tmp_path: Path) -> None:
    m, root = _signed_with_leaf(tmp_path, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    assert not verify(m, certificate_chain=root).ok
    assert verify(m, certificate_chain=root, now=NOW - 2 * DAY).ok
    naive = dt.datetime(2030, 1, 1)
    with pytest.raises(ValueError):
        load_signature(m / "model.sig", certificate_chain=root, now=naive)


def test_expired_intermediate_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", intermediate_not_after=NOW - DAY)
    m = make_model(tmp_path / "m")
    write_forged(m, statement(file_resources(m)), pki.leaf_key.key,
                 certificates=[pki.leaf, pki.intermediate])
    result = verify(m, certificate_chain=pki.root_path)
    assert kinds(result) == [("certificate-invalid", None)]
    assert "expired" in result.failures[0].message


def test_ca_certificate_cannot_sign(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    m = make_model(tmp_path / "m")
    # The intermediate CA signs the model directly.
    write_forged(m, statement(file_resources(m)), pki.intermediate_key,
                 certificates=[pki.intermediate])
    result = verify(m, certificate_chain=pki.root_path)
    assert "CA certificate" in result.failures[0].message


def test_valid_chain_but_signature_by_another_key(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    m = make_model(tmp_path / "m")
    attacker = ec.generate_private_key(ec.SECP256R1())
    write_forged(m, statement(file_resources(m)), attacker,
                 certificates=[pki.leaf, pki.intermediate])
    result = verify(m, certificate_chain=pki.root_path)
    assert kinds(result) == [("signature-invalid", None)]


def test_key_bundle_is_refused_when_a_chain_is_required(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    m = make_model(tmp_path / "m")
    sign(m, private_key=pki.leaf_key.private_path)  # key method, same key
    result = verify(m, certificate_chain=pki.root_path)
    assert kinds(result) == [("certificate-invalid", None)]
    assert "bare key" in result.failures[0].message
    # The key itself still verifies it (trusting a key does not need certificates).
    assert verify(m, public_key=pki.leaf_key.public_path).ok


def test_pinned_leaf_certificate(tmp_path: Path) -> None:
    # A self-signed signer certificate is its own root and can be trusted directly; a leaf
    # issued by a CA cannot stand in for that CA (model_signing refuses both the same way).
    pki = make_pki(tmp_path / "pki")
    m = make_model(tmp_path / "m")
    sign(m, private_key=pki.leaf_key.private_path, certificate_chain=[pki.chain_path])
    assert not verify(m, trust=TrustedCertificates.from_pem(pem(pki.leaf))).ok
    selfsigned = make_cert(pki.leaf_key.key, "self-signed signer")
    (tmp_path / "self.pem").write_bytes(pem(selfsigned))
    sign(m, private_key=pki.leaf_key.private_path, certificate_chain=[tmp_path / "self.pem"])
    assert verify(m, trust=TrustedCertificates.from_pem(pem(selfsigned))).ok


def test_sign_checks_the_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_key(tmp_path, "other")
    m = make_model(tmp_path / "m")
    with pytest.raises(SafehubError, match="public key"):
        sign(m, private_key=other.private_path, certificate_chain=[pki.chain_path])
    expired = make_cert(pki.leaf_key.key, "old", issuer_key=pki.intermediate_key,
                        issuer_cert=pki.intermediate, not_before=NOW - 9 * DAY,
                        not_after=NOW - DAY)
    (tmp_path / "old.pem").write_bytes(pem(expired, pki.intermediate))
    with pytest.raises(SafehubError, match="not valid now"):
        sign(m, private_key=pki.leaf_key.private_path, certificate_chain=[tmp_path / "old.pem"])
