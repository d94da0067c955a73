"""Keyless Sigstore verification (Fulcio certificate + Rekor entry), via ``sigstore-python``.

This is an optional extra (``pip install 'safehub[sigstore]'``): keyless bundles
need the Sigstore trust root, transparency-log proofs and signed timestamps, which
are not worth re-implementing. Without the package, verification says clearly that
it is unavailable instead of passing or crashing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from cryptography.hazmat.primitives.asymmetric import ec

from safehub._signing import certs, keys
from safehub._signing.result import Signer
from safehub.errors import SafehubError

__all__ = ["KeylessProblem", "sigstore_available", "verify_keyless"]

class KeylessProblem(ValueError):
    """The keyless bundle did not verify for the required identity and issuer."""


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SafehubError(
            "keyless Sigstore verification is unavailable: the optional `sigstore` package "
            "is not installed",
            subject=name,
            fix="pip install 'safehub[sigstore]' (or verify with a public key or certificate "
                "chain instead)") from exc


def sigstore_available() -> bool:
    """Whether ``sigstore-python`` can be imported here."""
    try:
        importlib.import_module("sigstore.verify")
    except ImportError:
        return False
    return True


def verify_keyless(bundle_bytes: bytes, *, identity: str, issuer: str, staging: bool = False,
                   trust_config: Path | None = None) -> tuple[str, bytes, Signer]:
    """Verify a keyless bundle for ``identity`` from ``issuer``; return the DSSE payload
    type, the payload and the signer. Raises :class:`KeylessProblem` when it does not
    verify, ``SafehubError`` when sigstore-python is missing."""
    models = _import("sigstore.models")
    verify = _import("sigstore.verify")
    errors = _import("sigstore.errors")
    try:
        bundle = models.Bundle.from_json(bundle_bytes)
    except (errors.Error, ValueError) as exc:  # ValueError: JSON and pydantic errors
        raise KeylessProblem(f"not a valid Sigstore bundle: {exc}") from exc
    try:
        if trust_config is not None:
            config = models.ClientTrustConfig.from_json(trust_config.read_text("utf-8"))
        elif staging:
            config = models.ClientTrustConfig.staging()
        else:
            config = models.ClientTrustConfig.production()
        verifier = verify.Verifier(trusted_root=config.trusted_root)
    except (OSError, errors.Error) as exc:
        raise SafehubError(f"cannot load the Sigstore trust root: {exc}",
                           fix="check network access to the Sigstore TUF repository, or pass "
                               "a trust config file") from exc
    policy = verify.policy.Identity(identity=identity, issuer=issuer)
    try:
        payload_type, payload = verifier.verify_dsse(bundle=bundle, policy=policy)
    except errors.Error as exc:
        raise KeylessProblem(f"keyless verification failed: {exc}") from exc
    cert = bundle.signing_certificate
    key = cert.public_key()
    fingerprint = keys.fingerprint(key) if isinstance(key, ec.EllipticCurvePublicKey) else ""
    # The policy checked the certificate's identity and issuer against these values.
    signer = Signer(kind="sigstore", key_fingerprint=fingerprint,
                    subject=certs.name_of(cert.subject), identity=identity, issuer=issuer)
    return str(payload_type), bytes(payload), signer
