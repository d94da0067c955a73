"""What a verifier trusts: a public key, CA certificates, or a Sigstore identity.

These are plain values so a policy can hold them: build them from PEM bytes (as
read from a policy file or a package) or from paths. Constructors fail with
``SafehubError`` on unusable input, never later during verification.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from safehub._signing import certs, keys
from safehub.errors import SafehubError

__all__ = [
    "SigstoreIdentity",
    "Trust",
    "TrustedCertificates",
    "TrustedKey",
    "read_capped",
    "read_input",
]

_MAX_PEM = 1 << 20


def read_capped(fh: BinaryIO, cap: int) -> bytes:
    """Read at most ``cap + 1`` bytes in small pieces (``read(n)`` would allocate ``n``)."""
    parts = []
    total = 0
    while total <= cap:
        chunk = fh.read(min(1 << 16, cap + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def read_input(path: str | os.PathLike[str], what: str) -> bytes:
    """Read a small trust or key file, turning OS errors into ``SafehubError``."""
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to must not hang; reads then block again,
        # so `--key <(command)` still works and a lone FIFO reads as empty.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            data = read_capped(fh, _MAX_PEM)
    except FileNotFoundError:
        raise SafehubError(f"{what} not found", subject=str(p),
                           fix=f"pass the path of an existing {what}") from None
    except OSError as exc:
        raise SafehubError(f"cannot read the {what}: {exc.strerror}", subject=str(p),
                           fix="check the path and its permissions") from exc
    if len(data) > _MAX_PEM:
        raise SafehubError(f"the {what} is larger than 1 MiB; not a PEM file", subject=str(p))
    return data


@dataclass(frozen=True)
class TrustedKey:
    """An EC public key (P-256/384/521) that a signature must verify with."""

    pem: bytes = field(repr=False)
    source: str = "<PEM>"
    key: ec.EllipticCurvePublicKey = field(init=False, repr=False, compare=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            key = keys.load_public_key(self.pem)
        except keys.KeyProblem as exc:
            raise SafehubError(f"unusable public key: {exc}", subject=self.source,
                               fix="pass the PEM public key (SubjectPublicKeyInfo) of an EC "
                                   "P-256, P-384 or P-521 key") from exc
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "fingerprint", keys.fingerprint(key))

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "<PEM>") -> TrustedKey:
        """A trusted key from PEM bytes."""
        return cls(pem=data, source=source)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> TrustedKey:
        """A trusted key from a PEM file."""
        return cls(pem=read_input(path, "public key file"), source=os.fspath(path))

    def describe(self) -> str:
        """``key sha256:<fingerprint> (<source>)``."""
        return f"key sha256:{self.fingerprint} ({self.source})"


@dataclass(frozen=True)
class TrustedCertificates:
    """CA certificates that a signing certificate must chain to.

    As in model_signing (OpenSSL without partial chains), the path must end at one of
    the self-signed certificates given (a root CA, or a self-signed signer certificate);
    other certificates given only help to build the path.
    """

    certificates: tuple[x509.Certificate, ...] = field(repr=False)
    source: str = "<PEM>"

    def __post_init__(self) -> None:
        if not self.certificates:
            raise SafehubError("no trusted certificate given", subject=self.source,
                               fix="pass the PEM file of the CA that issued the signer's "
                                   "certificate")

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "<PEM>") -> TrustedCertificates:
        """Trust anchors from PEM bytes holding one or more certificates."""
        try:
            found = certs.load_pem_certificates(data)
        except certs.CertificateProblem as exc:
            raise SafehubError(f"unusable certificate file: {exc}", subject=source,
                               fix="pass PEM certificates (-----BEGIN CERTIFICATE-----)"
                               ) from exc
        return cls(certificates=tuple(found), source=source)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustedCertificates:
        """Trust anchors from PEM files (each may hold several certificates)."""
        found: list[x509.Certificate] = []
        names = []
        for path in paths:
            names.append(os.fspath(path))
            found.extend(cls.from_pem(read_input(path, "certificate file"),
                                      source=os.fspath(path)).certificates)
        return cls(certificates=tuple(found), source=", ".join(names) or "<none>")

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """SHA-256 fingerprints (hex) of the anchors' DER encodings."""
        return tuple(hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
                     for c in self.certificates)

    def describe(self) -> str:
        """The anchors' subjects and where they came from."""
        names = ", ".join(repr(c.subject.rfc4514_string()) for c in self.certificates)
        return f"certificates {names} ({self.source})"


@dataclass(frozen=True)
class SigstoreIdentity:
    """A keyless Sigstore signer: the certificate identity (e-mail or workload URI) and
    the OIDC issuer that vouched for it. Needs the optional ``sigstore`` package."""

    identity: str
    issuer: str
    staging: bool = False
    trust_config: Path | None = None

    def describe(self) -> str:
        """``sigstore identity '<identity>' from issuer '<issuer>'``."""
        return f"sigstore identity {self.identity!r} from issuer {self.issuer!r}"


Trust: TypeAlias = "TrustedKey | TrustedCertificates | SigstoreIdentity"
