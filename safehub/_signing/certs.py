"""Certificate chains for the OMS certificate method, validated at a given time.

The reference tool (model_signing 1.1.1) validates the chain with OpenSSL at the
leaf's ``notBefore``, so expired certificates verify forever. safehub refuses what it
refuses (the same validation at the leaf's ``notBefore``; a path that must end at a
self-issued trusted root, as OpenSSL builds it without partial chains; a leaf whose
key usage or extended key usage must allow signing) and, on top of that, validates
every certificate in the path at the verification time (now, unless the caller says
otherwise) and refuses leaves stated for other uses (a CA, a TLS-only certificate).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from safehub._signing import keys

__all__ = ["CertificateProblem", "display", "load_der", "load_pem_certificates", "name_of",
           "validate_chain"]


class CertificateProblem(ValueError):
    """The certificate chain does not establish a trusted, currently valid signer."""


# What cryptography raises, lazily, for a certificate it parsed but cannot use: an
# unknown key algorithm or curve, a duplicate or malformed extension, a bad name.
MALFORMED = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension,
              x509.UnsupportedGeneralNameType)


def display(text: str) -> str:
    """``text`` (from a certificate or a bundle) safe to show: control, bidi, non-ASCII
    and lone-surrogate characters escaped, so it cannot forge or reorder a line."""
    return text.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROLS)


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def name_of(name: x509.Name) -> str:
    """A certificate name as RFC 4514 text, escaped for display."""
    return display(name.rfc4514_string())


def _ca_key_usage(policy: object, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    # As OpenSSL (and so the reference tool): a CA may omit keyUsage, as `openssl req
    # -x509` makes it; where it is stated, it must allow signing certificates.
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("the CA's key usage does not include keyCertSign")


def _ca_basic_constraints(policy: object, cert: x509.Certificate,
                          value: x509.BasicConstraints) -> None:
    # OpenSSL (and so the reference tool) accepts a CA whose basicConstraints is not
    # marked critical, as many `openssl` configurations write it; it must say CA:TRUE.
    if not value.ca:
        raise ValueError("basicConstraints does not say CA:TRUE")


_CA_POLICY = (verification.ExtensionPolicy.webpki_defaults_ca()
              .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _ca_key_usage)
              .require_present(x509.BasicConstraints, verification.Criticality.AGNOSTIC,
                               _ca_basic_constraints))


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM blob; raise :class:`CertificateProblem` if there is none."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateProblem(f"not PEM certificates: {exc}") from exc
    if not certs:
        raise CertificateProblem("no certificate found")
    return certs


def load_der(der: bytes) -> x509.Certificate:
    """A DER certificate from a bundle."""
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateProblem(f"malformed certificate in the bundle: {exc}") from exc


def _validity(cert: x509.Certificate, now: dt.datetime) -> None:
    name = name_of(cert.subject)
    if now < cert.not_valid_before_utc:
        raise CertificateProblem(
            f"certificate {name!r} is not valid yet (valid from "
            f"{cert.not_valid_before_utc.isoformat()}, verification time {now.isoformat()})")
    if now > cert.not_valid_after_utc:
        raise CertificateProblem(
            f"certificate {name!r} expired on {cert.not_valid_after_utc.isoformat()} "
            f"(verification time {now.isoformat()})")


def _check_leaf_usage(leaf: x509.Certificate) -> None:
    name = name_of(leaf.subject)
    ext = leaf.extensions
    try:
        if ext.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise CertificateProblem(f"signing certificate {name!r} is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    usage: x509.KeyUsage | None = None
    eku: x509.ExtendedKeyUsage | None = None
    with contextlib.suppress(x509.ExtensionNotFound):
        usage = ext.get_extension_for_class(x509.KeyUsage).value
    with contextlib.suppress(x509.ExtensionNotFound):
        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    # The reference's rule: digitalSignature in the key usage, or codeSigning in the
    # extended key usage (anyExtendedKeyUsage alone does not do).
    if not ((usage is not None and usage.digital_signature)
            or (eku is not None and ExtendedKeyUsageOID.CODE_SIGNING in eku)):
        raise CertificateProblem(f"signing certificate {name!r} allows neither digitalSignature "
                                 "(key usage) nor codeSigning (extended key usage)")
    # Where a usage is stated it must allow signing code: a TLS-only certificate from
    # the same CA must not be able to sign models.
    if usage is not None and not usage.digital_signature:
        raise CertificateProblem(f"signing certificate {name!r} key usage lacks "
                                 "digitalSignature")
    if eku is not None and not ({ExtendedKeyUsageOID.CODE_SIGNING,
                                 ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(eku)):
        raise CertificateProblem(f"signing certificate {name!r} extended key usage does not "
                                 "include codeSigning")


def validate_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                   anchors: Sequence[x509.Certificate], now: dt.datetime
                   ) -> tuple[ec.EllipticCurvePublicKey, list[x509.Certificate]]:
    """Validate ``leaf`` up to one of ``anchors`` at ``now``.

    ``intermediates`` (from the untrusted bundle) only help to build the path. Every
    certificate on the path, anchor included, must be valid at ``now``. Returns the
    leaf's public key and the path from leaf to anchor.
    """
    if now.tzinfo is None:
        raise ValueError("the verification time must be timezone-aware")
    try:
        return _validate(leaf, intermediates, anchors, now)
    except CertificateProblem:
        raise
    except MALFORMED as exc:
        raise CertificateProblem(f"malformed or unsupported certificate: "
                                 f"{display(str(exc))}") from exc


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _validate(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
              anchors: Sequence[x509.Certificate], now: dt.datetime
              ) -> tuple[ec.EllipticCurvePublicKey, list[x509.Certificate]]:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertificateProblem("the signing certificate's key is not an EC key")
    try:
        keys.hash_for(key)
    except keys.KeyProblem as exc:
        raise CertificateProblem(str(exc)) from exc
    _validity(leaf, now)
    _check_leaf_usage(leaf)
    # As OpenSSL builds the path (no partial chains): it must end at a trusted
    # self-issued root. A trusted intermediate or signer certificate only helps to build
    # the path; one that is itself self-issued (a self-signed signer) is a root.
    roots = [a for a in anchors if _self_issued(a)]
    helpers = [*intermediates, *(a for a in anchors if not _self_issued(a))]
    if any(r == leaf for r in roots):
        return key, [leaf]
    if not roots:
        raise CertificateProblem(
            "no trusted root: the trusted certificates are all issued by another CA, and the "
            "path must end at a self-signed root (pass the root CA's certificate)")
    # The reference validates at the leaf's notBefore; safehub also validates now.
    _build(leaf, helpers, roots, leaf.not_valid_before_utc, reference_time=True)
    chain = _build(leaf, helpers, roots, now, reference_time=False)
    for cert in chain:
        _validity(cert, now)
    return key, chain


def _build(leaf: x509.Certificate, helpers: Sequence[x509.Certificate],
           roots: Sequence[x509.Certificate], when: dt.datetime, *,
           reference_time: bool) -> list[x509.Certificate]:
    builder = (verification.PolicyBuilder()
               .store(verification.Store(list(roots)))
               .time(when)
               .extension_policies(
                   ca_policy=_CA_POLICY,
                   # The leaf's usage is checked above for code signing; the web PKI
                   # end-entity profile (serverAuth/clientAuth, SAN) does not apply.
                   ee_policy=verification.ExtensionPolicy.permit_all()))
    try:
        verified = builder.build_client_verifier().verify(leaf, list(helpers))
    except verification.VerificationError as exc:
        if reference_time:
            raise CertificateProblem(
                f"the signing certificate {name_of(leaf.subject)!r} (issued by "
                f"{name_of(leaf.issuer)!r}) does not chain to a trusted CA at its own "
                f"notBefore {when.isoformat()} (when model_signing checks it): "
                f"{display(str(exc))}") from exc
        # Say which certificate's validity is the problem, when that is the problem.
        for cert in [*helpers, *roots]:
            if cert.subject == leaf.issuer:
                _validity(cert, when)
        raise CertificateProblem(
            f"the signing certificate {name_of(leaf.subject)!r} (issued by "
            f"{name_of(leaf.issuer)!r}) does not chain to a trusted CA: "
            f"{display(str(exc))}") from exc
    return list(verified.chain)
