"""EC keys as OMS uses them: P-256/384/521, each with its matching hash."""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from safehub._signing.dsse import Envelope

__all__ = [
    "KeyProblem",
    "envelope_verifies",
    "fingerprint",
    "hash_for",
    "load_private_key",
    "load_public_key",
    "pem_hint",
]

# The curves the Sigstore protobuf specs (and so model_signing) allow, with their hash.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


class KeyProblem(ValueError):
    """The key is unreadable or of a kind OMS does not use."""


def hash_for(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    """The hash an OMS signature with this key uses (SHA-256/384/512 by curve size)."""
    try:
        return _HASHES[key.curve.name]()
    except KeyError:
        raise KeyProblem(f"unsupported curve {key.curve.name}; OMS uses P-256, P-384 or "
                        "P-521") from None


def _check_curve(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyProblem(f"not an elliptic-curve key ({type(key).__name__}); OMS signatures use "
                        "EC keys on P-256, P-384 or P-521")
    hash_for(key)
    return key


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """Load a PEM public key (SubjectPublicKeyInfo) and check it is a supported EC key."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyProblem(f"not a PEM public key: {exc}") from exc
    return _check_curve(key)


def load_private_key(pem: bytes, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load a PEM private key and check it is a supported EC key."""
    try:
        key = serialization.load_pem_private_key(pem, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyProblem(f"not a usable PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyProblem(f"not an elliptic-curve private key ({type(key).__name__})")
    _check_curve(key.public_key())
    return key


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 hex of the key's DER SubjectPublicKeyInfo: how safehub names a key."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def pem_hint(key: ec.EllipticCurvePublicKey) -> str:
    """The ``publicKey.hint`` model_signing writes: SHA-256 hex of the PEM encoding."""
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def envelope_verifies(envelope: Envelope, key: ec.EllipticCurvePublicKey, *,
                      legacy_hash: hashes.HashAlgorithm | None = None) -> bool:
    """Whether the envelope's first signature verifies with ``key``.

    Only the first signature counts, as in model_signing: an envelope whose first
    signature is not the trusted key's does not verify, whatever follows it. The
    standard PAE is tried first with the curve's hash; then the legacy model_signing
    0.2 encoding, with ``legacy_hash`` where that release used a fixed hash
    (certificates: SHA-256).
    """
    standard, legacy = envelope.signed_messages()
    attempts = ((standard, hash_for(key)), (legacy, legacy_hash or hash_for(key)))
    first = envelope.signatures[0]
    for message, digest in attempts:
        try:
            key.verify(first.sig, message, ec.ECDSA(digest))
        except InvalidSignature:
            continue
        return True
    return False
