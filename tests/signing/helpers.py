"""Test material built on the fly: EC keys, a small CA, model trees, hand-made bundles.

The bundle and statement builders here are written independently of safehub's
signer (plain json + cryptography), so tests can forge exactly what an attacker
would and check that verification, not luck, refuses it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
HASH_OF = {"secp256r1": hashes.SHA256(), "secp384r1": hashes.SHA384(),
           "secp521r1": hashes.SHA512()}
NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


@dataclass
class KeyPair:
    key: ec.EllipticCurvePrivateKey
    private_path: Path
    public_path: Path

    @property
    def public_pem(self) -> bytes:
        return self.public_path.read_bytes()


def make_key(where: Path, name: str, curve: str = "P-256") -> KeyPair:
    key = ec.generate_private_key(CURVES[curve])
    priv = where / f"{name}.pem"
    pub = where / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(key, priv, pub)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "safehub-tests")])


def make_cert(subject_key: ec.EllipticCurvePrivateKey, cn: str, *,
              issuer_key: ec.EllipticCurvePrivateKey | None = None,
              issuer_cert: x509.Certificate | None = None, ca: bool = False,
              path_length: int | None = None, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None,
              eku: list[x509.ObjectIdentifier] | None = None,
              key_usage: bool = True) -> x509.Certificate:
    issuer_key = issuer_key or subject_key
    issuer_name = issuer_cert.subject if issuer_cert is not None else _name(cn)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(issuer_name)
               .public_key(subject_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - DAY)
               .not_valid_after(not_after or NOW + 365 * DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca
                                                    else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                   subject_key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if key_usage:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    if not ca:
        usages = eku if eku is not None else [ExtendedKeyUsageOID.CODE_SIGNING]
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class Pki:
    """root -> intermediate -> leaf, with files on disk."""

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: KeyPair
    root_path: Path
    chain_path: Path  # leaf + intermediate, what the signer passes
    root_key: ec.EllipticCurvePrivateKey
    intermediate_key: ec.EllipticCurvePrivateKey


def make_pki(where: Path, *, curve: str = "P-256", name: str = "pki",
             leaf_not_before: dt.datetime | None = None,
             leaf_not_after: dt.datetime | None = None,
             intermediate_not_after: dt.datetime | None = None,
             leaf_eku: list[x509.ObjectIdentifier] | None = None) -> Pki:
    where.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = make_cert(root_key, f"{name} root", ca=True, path_length=1,
                     not_before=NOW - 30 * DAY, not_after=NOW + 3650 * DAY)
    int_key = ec.generate_private_key(ec.SECP256R1())
    inter = make_cert(int_key, f"{name} intermediate", issuer_key=root_key, issuer_cert=root,
                      ca=True, path_length=0, not_before=NOW - 30 * DAY,
                      not_after=intermediate_not_after or NOW + 3650 * DAY)
    leaf_pair = make_key(where, f"{name}_leaf", curve)
    leaf = make_cert(leaf_pair.key, f"{name} signer", issuer_key=int_key, issuer_cert=inter,
                     not_before=leaf_not_before, not_after=leaf_not_after, eku=leaf_eku)
    root_path = where / f"{name}_root.pem"
    root_path.write_bytes(pem(root))
    chain_path = where / f"{name}_chain.pem"
    chain_path.write_bytes(pem(leaf, inter))
    return Pki(root, inter, leaf, leaf_pair, root_path, chain_path, root_key, int_key)


def make_model(root: Path, *, weights: bytes | None = None) -> Path:
    """A small torch.hub-style repo: hubconf, a package, weights, config, README."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "hubconf.py").write_text("dependencies = []\n\ndef tiny():\n    return 'tiny'\n")
    (root / "tiny").mkdir(exist_ok=True)
    (root / "tiny" / "__init__.py").write_text("VALUE = 1\n")
    (root / "model.pt").write_bytes(weights if weights is not None else os.urandom(3000))
    (root / "config.json").write_text('{"in": 4, "out": 2}\n')
    (root / "README.md").write_text("# tiny model\n")
    (root / ".gitattributes").write_text("*.pt filter=lfs\n")
    return root


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pae(payload: bytes, payload_type: str = "application/vnd.in-toto+json") -> bytes:
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload),
                                    payload)


def statement(resources: list[dict[str, str]], *, serialization: dict[str, Any] | None = None,
              name: str = "model", root: str | None = None) -> dict[str, Any]:
    """An OMS v1.0 statement over the given resources (root digest computed unless given)."""
    digest = root or hashlib.sha256(b"".join(bytes.fromhex(r["digest"])
                                             for r in resources)).hexdigest()
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": digest}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {"serialization": serialization or {
            "method": "files", "hash_type": "sha256", "allow_symlinks": False,
            "ignore_paths": [".git", ".gitattributes", ".github", ".gitignore", "model.sig"]},
            "resources": resources},
    }


def file_resources(model: Path) -> list[dict[str, str]]:
    out = []
    for path in sorted(model.rglob("*")):
        rel = path.relative_to(model).as_posix()
        if path.is_file() and not rel.startswith(".git") and rel != "model.sig":
            out.append({"name": rel, "algorithm": "sha256",
                        "digest": hashlib.sha256(path.read_bytes()).hexdigest()})
    return out


def bundle(payload: bytes, key: ec.EllipticCurvePrivateKey, *, hint: str | None = "",
           certificates: list[x509.Certificate] | None = None,
           media_type: str = "application/vnd.dev.sigstore.bundle.v0.3+json",
           payload_type: str = "application/vnd.in-toto+json",
           signed_message: bytes | None = None) -> bytes:
    """A bundle signing ``payload`` with ``key`` (PAE unless ``signed_message`` is given)."""
    sig = key.sign(signed_message if signed_message is not None else pae(payload, payload_type),
                   ec.ECDSA(HASH_OF[key.curve.name]))
    material: dict[str, Any]
    if certificates:
        material = {"x509CertificateChain": {"certificates": [
            {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
            for c in certificates]}}
    else:
        if hint == "":
            pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
            hint = hashlib.sha256(pub).hexdigest()
        material = {"publicKey": {"hint": hint} if hint is not None else {}}
    material["tlogEntries"] = []
    doc = {"mediaType": media_type, "verificationMaterial": material,
           "dsseEnvelope": {"payload": b64(payload), "payloadType": payload_type,
                            "signatures": [{"sig": b64(sig), "keyid": ""}]}}
    return json.dumps(doc, indent=2).encode()


def write_forged(model: Path, stmt: dict[str, Any] | bytes, key: ec.EllipticCurvePrivateKey,
                 **kwargs: Any) -> Path:
    payload = stmt if isinstance(stmt, bytes) else json.dumps(stmt).encode()
    sig = model / "model.sig"
    sig.write_bytes(bundle(payload, key, **kwargs))
    return sig
