"""What verifying a signature yields: the signer, each failure, and the overall verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from safehub.errors import IntegrityError, SafehubError
from safehub.rules import RULES

__all__ = [
    "Failure",
    "FailureKind",
    "SignatureInvalid",
    "SignatureMissing",
    "Signer",
    "Verification",
    "VerificationFailed",
]


class FailureKind(str, Enum):
    """Why a model did not verify. Each kind maps to one SH3xx rule."""

    SIGNATURE_INVALID = "signature-invalid"  # forged, wrong key, malformed bundle or statement
    CERTIFICATE_INVALID = "certificate-invalid"  # chain, validity period or key usage
    DIGEST_MISMATCH = "digest-mismatch"  # the bytes differ from what was signed
    UNSIGNED_FILE = "unsigned-file"  # a file the signature does not cover
    UNSIGNED_CODE = "unsigned-code"  # unsigned Python code: never ignorable by default
    MISSING_FILE = "missing-file"  # a signed file is absent
    UNREADABLE = "unreadable"  # a signed file exists but could not be read
    UNSAFE_PATH = "unsafe-path"  # symlink, special file, absolute or `..` path

    @property
    def rule_id(self) -> str:
        return _RULE_OF_KIND[self]


_RULE_OF_KIND = {
    FailureKind.SIGNATURE_INVALID: "SH301",
    FailureKind.CERTIFICATE_INVALID: "SH306",
    FailureKind.DIGEST_MISMATCH: "SH300",
    FailureKind.UNSIGNED_FILE: "SH302",
    FailureKind.UNSIGNED_CODE: "SH302",
    FailureKind.MISSING_FILE: "SH303",
    FailureKind.UNREADABLE: "SH303",
    FailureKind.UNSAFE_PATH: "SH305",
}


@dataclass(frozen=True)
class Failure:
    """One reason a model did not verify.

    ``path`` is the model-relative file (``.`` for a single-file model) or ``None``
    when the failure is about the signature itself; ``expected`` and ``actual``
    are digests as ``algorithm:hex`` (or sizes) where the failure compares values.
    """

    kind: FailureKind
    message: str
    path: str | None = None
    expected: str | None = None
    actual: str | None = None

    @property
    def rule_id(self) -> str:
        """The SH3xx rule this failure reports under."""
        return self.kind.rule_id

    def __str__(self) -> str:
        where = f" {self.path}" if self.path is not None else ""
        text = f"{self.rule_id} {self.kind.value}{where}: {self.message}"
        if self.expected is not None or self.actual is not None:
            text += f" (expected {self.expected or '-'}, actual {self.actual or '-'})"
        return text

    def to_json(self) -> dict[str, str | None]:
        """A JSON-ready dict (for reports)."""
        return {"rule_id": self.rule_id, "kind": self.kind.value, "path": self.path,
                "message": self.message, "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True)
class Signer:
    """Who signed, as established by the verification (never by an unsigned hint).

    ``kind`` is ``key``, ``certificate`` or ``sigstore``. ``key_fingerprint`` is the
    SHA-256 of the signing public key's DER SubjectPublicKeyInfo. For certificates,
    ``subject`` and ``issuer`` are the leaf's RFC 4514 names and ``chain`` the subjects
    from the leaf up to the trust anchor; for Sigstore, ``identity`` and ``issuer`` are
    the certificate's identity and OIDC issuer.
    """

    kind: str
    key_fingerprint: str
    subject: str | None = None
    issuer: str | None = None
    identity: str | None = None
    chain: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for humans, naming the key and, where there is one, the certificate."""
        key = f"key sha256:{self.key_fingerprint}"
        if self.kind == "certificate":
            return f"certificate {self.subject!r} issued by {self.issuer!r} ({key})"
        if self.kind == "sigstore":
            return f"sigstore identity {self.identity!r} from issuer {self.issuer!r} ({key})"
        return key

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (for reports and policy decision records)."""
        return {"kind": self.kind, "key_fingerprint": self.key_fingerprint,
                "subject": self.subject, "issuer": self.issuer, "identity": self.identity,
                "chain": list(self.chain)}


def _frozen_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a model against its signature.

    ``ok`` is true only when the signature verified and every file matched.
    ``files`` maps each checked file to the digest that was verified, as
    ``algorithm:hex`` (for sharded signatures, the shard digests joined by commas).
    ``skipped`` lists files excluded by the standard's, the signer's or the caller's
    ignore rules; ``unsigned_ignored`` the unsigned files let through because the
    caller asked for it.
    """

    model: str
    signature: str | None
    signer: Signer | None
    files: Mapping[str, str] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    skipped: tuple[str, ...] = ()
    unsigned_ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", _frozen_map(self.files))

    @property
    def ok(self) -> bool:
        """True when the signature verified and every file matched it."""
        return self.signer is not None and not self.failures

    def raise_for_failure(self) -> None:
        """Raise :class:`VerificationFailed` (an ``IntegrityError``) unless ``ok``."""
        if self.ok:
            return
        failures = self.failures or (Failure(FailureKind.SIGNATURE_INVALID,
                                             "the signature was not verified"),)
        raise VerificationFailed(
            f"{self.model} does not match its signature ({len(failures)} problem"
            f"{'s' if len(failures) != 1 else ''})",
            subject=self.model, fix=RULES[failures[0].rule_id].help,
            failures=failures, signer=self.signer, signature=self.signature)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the ``safehub verify -f json`` report body)."""
        return {"model": self.model, "signature": self.signature, "ok": self.ok,
                "signer": self.signer.to_json() if self.signer else None,
                "files": dict(sorted(self.files.items())),
                "failures": [f.to_json() for f in self.failures],
                "skipped": list(self.skipped), "unsigned_ignored": list(self.unsigned_ignored)}


class VerificationFailed(IntegrityError):
    """A model or its signature did not verify; ``failures`` says what, file by file."""

    def __init__(self, message: str, *, subject: str | None = None, fix: str | None = None,
                 failures: Sequence[Failure] = (), signer: Signer | None = None,
                 signature: str | None = None, trusted: str | None = None):
        super().__init__(message, subject=subject, fix=fix)
        self.failures = tuple(failures)
        self.signer = signer
        self.signature = signature
        self.trusted = trusted

    def _details(self) -> list[str]:
        lines = []
        if self.signature:
            lines.append(f"  signature: {self.signature}")
        if self.signer is not None:
            lines.append(f"  signed by: {self.signer.describe()}")
        if self.trusted:
            lines.append(f"  trusted: {self.trusted}")
        lines.extend(f"  {failure}" for failure in self.failures[:50])
        if len(self.failures) > 50:
            lines.append(f"  ... and {len(self.failures) - 50} more")
        return lines


class SignatureInvalid(VerificationFailed):
    """The signature file itself did not verify (forged, wrong key, malformed, bad chain)."""


class SignatureMissing(SafehubError):
    """No signature file where one was expected (rule SH304)."""

    rule_id = "SH304"
