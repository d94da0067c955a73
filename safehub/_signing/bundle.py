"""The Sigstore bundle that OMS signatures are stored in (``model.sig``).

Only the parts needed for key and certificate verification are read: the media
type, the verification material (a key hint, or the signing certificate and its
chain) and the DSSE envelope. The shape is checked as model_signing checks it (unknown
fields, wrong types and a second kind of material are refused), so both tools refuse
the same bundles. Keyless verification hands the whole bundle to ``sigstore-python``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from safehub import _strictjson as strictjson
from safehub._signing.dsse import Envelope, EnvelopeSignature

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "Bundle",
    "BundleError",
    "dump_bundle",
    "parse_bundle",
]

# What model_signing 1.x writes, and the only media type its key and certificate
# verifiers accept.
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


class BundleError(ValueError):
    """The bundle is malformed or not one we can verify."""


@dataclass(frozen=True)
class Bundle:
    """The parsed parts of a bundle that verification needs.

    ``key_hint`` is the unsigned ``publicKey.hint``; ``certificates`` the DER
    certificates of the verification material, signing certificate first; ``material``
    which field held them (``publicKey``, ``x509CertificateChain`` or ``certificate``).
    """

    media_type: str
    envelope: Envelope
    key_hint: str | None
    certificates: tuple[bytes, ...]
    material: str

    @property
    def has_public_key(self) -> bool:
        """Whether the material is a (hinted) public key rather than certificates."""
        return self.material == "publicKey"


def _b64(value: object, what: str) -> bytes:
    # As the reference reads protobuf bytes (sigstore_models: base64.b64decode without
    # validate): the standard alphabet, padding required, other characters dropped. The
    # same text therefore decodes to the same bytes here as there.
    if not isinstance(value, str):
        raise BundleError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{what} is not valid base64") from exc


def _obj(value: object, what: str, allowed: frozenset[str]) -> dict[str, Any]:
    # The reference validates bundles with extra="forbid" models: an unknown field is
    # not ignored there, so it is not ignored here.
    if not isinstance(value, dict):
        raise BundleError(f"{what} is not a JSON object")
    extra = sorted(set(value) - allowed)
    if extra:
        raise BundleError(f"{what} has unknown field {extra[0]!r}")
    return value


def _str_or_none(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BundleError(f"{what} is not a string")
    return value


_BUNDLE = frozenset({"mediaType", "verificationMaterial", "dsseEnvelope", "messageSignature"})
_MATERIAL = frozenset({"publicKey", "x509CertificateChain", "certificate", "tlogEntries",
                       "timestampVerificationData"})
# model_signing drops rawBytes and keyDetails from publicKey before validating.
_PUBLIC_KEY = frozenset({"hint", "rawBytes", "keyDetails"})
_ENVELOPE = frozenset({"payload", "payloadType", "signatures"})


def _envelope(raw: object) -> Envelope:
    env = _obj(raw, "dsseEnvelope", _ENVELOPE)
    payload_type = env.get("payloadType")
    if not isinstance(payload_type, str):
        raise BundleError("dsseEnvelope.payloadType is missing")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise BundleError("dsseEnvelope.signatures is missing or empty")
    signatures = []
    for i, item in enumerate(sigs):
        entry = _obj(item, f"dsseEnvelope.signatures[{i}]", frozenset({"sig", "keyid"}))
        keyid = _str_or_none(entry.get("keyid"), f"dsseEnvelope.signatures[{i}].keyid")
        signatures.append(EnvelopeSignature(
            sig=_b64(entry.get("sig"), f"dsseEnvelope.signatures[{i}].sig"),
            keyid=keyid or ""))
    return Envelope(payload=_b64(env.get("payload"), "dsseEnvelope.payload"),
                    payload_type=payload_type, signatures=tuple(signatures))


def _certificate(raw: object, what: str) -> bytes:
    return _b64(_obj(raw, what, frozenset({"rawBytes"})).get("rawBytes"), f"{what}.rawBytes")


def _timestamps(raw: object) -> None:
    data = _obj(raw, "timestampVerificationData", frozenset({"rfc3161Timestamps"}))
    stamps = data.get("rfc3161Timestamps", [])
    if not isinstance(stamps, list):
        raise BundleError("timestampVerificationData.rfc3161Timestamps is not a list")
    for i, stamp in enumerate(stamps):
        what = f"rfc3161Timestamps[{i}]"
        _b64(_obj(stamp, what, frozenset({"signedTimestamp"})).get("signedTimestamp"),
             f"{what}.signedTimestamp")


def parse_bundle(data: bytes) -> Bundle:
    """Parse a bundle's JSON; raise :class:`BundleError` when it is not a usable bundle.

    What is accepted is what model_signing 1.1.1's key and certificate verifiers read:
    the v0.3 media type, a DSSE envelope, exactly one kind of verification material and
    no transparency-log entries (those methods write none and check none).
    """
    try:
        doc = strictjson.loads(data)
    except strictjson.StrictJSONError as exc:
        raise BundleError(f"not a valid JSON bundle: {exc}") from exc
    doc = _obj(doc, "the bundle", _BUNDLE)
    media_type = doc.get("mediaType")
    if media_type != BUNDLE_MEDIA_TYPE:
        shown = media_type if isinstance(media_type, str) else None
        raise BundleError(f"unsupported bundle media type {shown!r} (key and certificate "
                          f"signatures use {BUNDLE_MEDIA_TYPE})")
    if doc.get("messageSignature") is not None:
        raise BundleError("the bundle holds a plain message signature, not a DSSE "
                          "envelope over a model manifest")
    if doc.get("dsseEnvelope") is None:
        raise BundleError("the bundle has no dsseEnvelope")
    envelope = _envelope(doc["dsseEnvelope"])
    material = _obj(doc.get("verificationMaterial"), "verificationMaterial", _MATERIAL)
    tlog = material.get("tlogEntries", [])
    if not isinstance(tlog, list):
        raise BundleError("verificationMaterial.tlogEntries is not a list")
    if tlog:
        raise BundleError("the bundle carries transparency-log entries: that is a keyless "
                          "(Sigstore) signature, not a key or certificate one")
    if material.get("timestampVerificationData") is not None:
        _timestamps(material["timestampVerificationData"])

    kinds = [k for k in ("publicKey", "x509CertificateChain", "certificate")
             if material.get(k) is not None]
    if len(kinds) != 1:
        raise BundleError("the verification material must hold exactly one of a public key, "
                          "a certificate chain or a certificate")
    kind = kinds[0]
    hint: str | None = None
    certs: list[bytes] = []
    if kind == "publicKey":
        key = _obj(material["publicKey"], "verificationMaterial.publicKey", _PUBLIC_KEY)
        hint = _str_or_none(key.get("hint"), "publicKey.hint") or None
        if hint is not None:
            try:
                hint.encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError("publicKey.hint is not valid Unicode (a lone surrogate "
                                  "escape)") from None
    elif kind == "x509CertificateChain":
        chain = _obj(material["x509CertificateChain"],
                     "verificationMaterial.x509CertificateChain", frozenset({"certificates"}))
        items = chain.get("certificates")
        if not isinstance(items, list) or not items:
            raise BundleError("x509CertificateChain.certificates is missing or empty")
        certs = [_certificate(item, f"x509CertificateChain.certificates[{i}]")
                 for i, item in enumerate(items)]
    else:
        certs = [_certificate(material["certificate"], "verificationMaterial.certificate")]
    return Bundle(media_type=media_type, envelope=envelope, key_hint=hint,
                  certificates=tuple(certs), material=kind)


def dump_bundle(envelope: Envelope, *, key_hint: str | None = None,
                certificates: Sequence[bytes] = ()) -> bytes:
    """Serialize a v0.3 bundle the way model_signing writes it (key hint or certificate chain)."""
    material: dict[str, Any]
    if certificates:
        material = {"x509CertificateChain": {"certificates": [
            {"rawBytes": base64.b64encode(der).decode("ascii")} for der in certificates]}}
    else:
        material = {"publicKey": {"hint": key_hint or ""}}
    material["tlogEntries"] = []
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(envelope.payload).decode("ascii"),
            "payloadType": envelope.payload_type,
            "signatures": [{"sig": base64.b64encode(s.sig).decode("ascii"), "keyid": s.keyid}
                           for s in envelope.signatures],
        },
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")
