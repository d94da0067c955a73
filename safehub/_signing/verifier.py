"""From bundle bytes and a trust anchor to a verified manifest and its signer.

Order matters: the envelope's signature is checked before a single byte of the
payload is interpreted, and the payload is only then parsed into a manifest whose
paths are validated. The bundle's ``publicKey.hint`` is never trusted: it can only
make a bundle fail (a stated hint that is not the trusted key's), as in model_signing.
"""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives import hashes

from safehub._signing import certs, keys
from safehub._signing.bundle import BundleError, parse_bundle
from safehub._signing.dsse import IN_TOTO_PAYLOAD_TYPE
from safehub._signing.keyless import KeylessProblem, verify_keyless
from safehub._signing.manifest import Manifest, ManifestError, UnsafeManifestPath, hash_factory
from safehub._signing.result import Failure, FailureKind, SignatureInvalid, Signer
from safehub._signing.statement import parse_statement
from safehub._signing.trust import SigstoreIdentity, Trust, TrustedCertificates, TrustedKey
from safehub.errors import InternalError

__all__ = ["verify_signature"]


def _fail(kind: FailureKind, message: str, *, source: str, trust: Trust,
          signer: Signer | None = None) -> SignatureInvalid:
    # Parts of the message come from the bundle (hints, names, parser errors): escaped once
    # here, so no failure can carry a control, bidi or lone-surrogate character.
    message = certs.display(message)
    return SignatureInvalid(
        f"the signature {source} does not verify: {message}", subject=source,
        fix=_FIXES[kind], failures=(Failure(kind, message),), signer=signer,
        signature=source, trusted=trust.describe())


_FIXES = {
    FailureKind.SIGNATURE_INVALID: "obtain a correctly signed copy of the model, or verify "
                                   "with the key or CA of whoever signed it",
    FailureKind.CERTIFICATE_INVALID: "verify against the CA that issued the signer's "
                                     "certificate, or have the model re-signed with a valid "
                                     "code-signing certificate",
    FailureKind.UNSAFE_PATH: "do not use this model: its signed manifest names paths outside "
                             "the model folder",
}


def _key_signer(trust: TrustedKey) -> Signer:
    return Signer(kind="key", key_fingerprint=trust.fingerprint)


def _manifest(payload_type: str, payload: bytes, *, source: str, trust: Trust,
              signer: Signer) -> Manifest:
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise _fail(FailureKind.SIGNATURE_INVALID,
                    f"payload type {payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE}",
                    source=source, trust=trust, signer=signer)
    try:
        manifest = parse_statement(payload)
        hash_factory(manifest.serialization.hash_type)  # can it be checked here at all?
        return manifest
    except UnsafeManifestPath as exc:
        raise _fail(FailureKind.UNSAFE_PATH, f"the signed manifest names an unsafe path: {exc}",
                    source=source, trust=trust, signer=signer) from exc
    except ManifestError as exc:
        raise _fail(FailureKind.SIGNATURE_INVALID, f"the signed statement is not a valid "
                    f"OMS manifest: {exc}", source=source, trust=trust, signer=signer) from exc


def verify_signature(data: bytes, trust: Trust, *, source: str,
                     now: dt.datetime | None = None) -> tuple[Manifest, Signer]:
    """Verify bundle ``data`` against ``trust``; raise :class:`SignatureInvalid` if it
    does not verify (with one structured failure saying why)."""
    if isinstance(trust, SigstoreIdentity):
        try:
            payload_type, payload, signer = verify_keyless(
                data, identity=trust.identity, issuer=trust.issuer, staging=trust.staging,
                trust_config=trust.trust_config)
        except KeylessProblem as exc:
            raise _fail(FailureKind.SIGNATURE_INVALID, str(exc), source=source,
                        trust=trust) from exc
        return _manifest(payload_type, payload, source=source, trust=trust,
                         signer=signer), signer

    try:
        bundle = parse_bundle(data)
    except BundleError as exc:
        raise _fail(FailureKind.SIGNATURE_INVALID, f"malformed bundle: {exc}", source=source,
                    trust=trust) from exc
    envelope = bundle.envelope

    if isinstance(trust, TrustedKey):
        if not bundle.has_public_key:
            raise _fail(FailureKind.SIGNATURE_INVALID,
                        "the bundle carries certificates, not a public key: verify it with "
                        "the certificate chain", source=source, trust=trust)
        expected_hint = keys.pem_hint(trust.key)
        hint = bundle.key_hint
        # model_signing refuses a stated hint that is not the trusted key's (the hint is
        # unsigned, so it can only make a bundle fail, never pass).
        if hint is not None and hint != expected_hint:
            raise _fail(FailureKind.SIGNATURE_INVALID,
                        f"key mismatch: it appears signed by a different key: the bundle's key "
                        f"hint is {certs.display(hint)[:200]}, the trusted {trust.describe()} "
                        f"has hint {expected_hint}",
                        source=source, trust=trust)
        if not keys.envelope_verifies(envelope, trust.key):
            raise _fail(FailureKind.SIGNATURE_INVALID,
                        f"the DSSE signature does not verify with the trusted "
                        f"{trust.describe()}: wrong key, or the signed content was altered",
                        source=source, trust=trust)
        signer = _key_signer(trust)
        return _manifest(envelope.payload_type, envelope.payload, source=source, trust=trust,
                         signer=signer), signer

    if not isinstance(trust, TrustedCertificates):
        raise InternalError(f"unknown trust anchor {type(trust).__name__}")
    if not bundle.certificates:
        raise _fail(FailureKind.CERTIFICATE_INVALID,
                    "the bundle carries no certificate (it was signed with a bare key), but a "
                    "certificate chain is required", source=source, trust=trust)
    if bundle.material != "x509CertificateChain":
        # model_signing's certificate verifier reads x509CertificateChain only.
        raise _fail(FailureKind.CERTIFICATE_INVALID,
                    "the bundle holds a lone certificate, not the x509CertificateChain "
                    "that certificate-method signatures carry", source=source, trust=trust)
    when = now or dt.datetime.now(dt.timezone.utc)
    if when.tzinfo is None:
        raise ValueError("the verification time must be timezone-aware")
    try:
        leaf = certs.load_der(bundle.certificates[0])
        others = [certs.load_der(der) for der in bundle.certificates[1:]]
        key, chain = certs.validate_chain(leaf, others, trust.certificates, when)
        signer = Signer(kind="certificate", key_fingerprint=keys.fingerprint(key),
                        subject=certs.name_of(leaf.subject), issuer=certs.name_of(leaf.issuer),
                        chain=tuple(certs.name_of(c.subject) for c in chain))
    except certs.CertificateProblem as exc:
        raise _fail(FailureKind.CERTIFICATE_INVALID, str(exc), source=source,
                    trust=trust) from exc
    except certs.MALFORMED as exc:  # a name cryptography parses only when asked
        raise _fail(FailureKind.CERTIFICATE_INVALID, f"malformed certificate: "
                    f"{certs.display(str(exc))}", source=source, trust=trust) from exc
    # model_signing 0.2 signed certificate bundles with SHA-256 whatever the curve.
    if not keys.envelope_verifies(envelope, key, legacy_hash=hashes.SHA256()):
        raise _fail(FailureKind.SIGNATURE_INVALID,
                    f"the DSSE signature does not verify with the key of certificate "
                    f"{signer.subject!r} (the signed content was altered)", source=source,
                    trust=trust)
    return _manifest(envelope.payload_type, envelope.payload, source=source, trust=trust,
                     signer=signer), signer
