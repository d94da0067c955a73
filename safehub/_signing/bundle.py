"""The Sigstore bundle that OMS signatures are stored in (``model.sig``).

Only the parts needed for key and certificate verification are read: the media
type, the verification material (a key hint, or the signing certificate and its
chain) and the DSSE envelope. Transparency-log entries are not used by the key and
certificate methods; keyless verification hands the whole bundle to
``sigstore-python`` instead.
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
    "MEDIA_TYPES",
    "Bundle",
    "BundleError",
    "dump_bundle",
    "parse_bundle",
]

# What model_signing 1.x writes.
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# Every media type a Sigstore bundle has had; older model_signing and sigstore releases
# wrote the ";version=" forms. The structure we read is the same in all of them.
MEDIA_TYPES = frozenset({
    BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
})


class BundleError(ValueError):
    """The bundle is malformed or not one we can verify."""


@dataclass(frozen=True)
class Bundle:
    """The parsed parts of a bundle that verification needs.

    ``key_hint`` is the unsigned ``publicKey.hint`` (advisory only); ``certificates``
    the DER certificates of the verification material, signing certificate first.
    """

    media_type: str
    envelope: Envelope
    key_hint: str | None
    certificates: tuple[bytes, ...]
    has_public_key: bool


def _b64(value: object, what: str) -> bytes:
    # Protobuf JSON writes bytes as standard base64 and accepts the URL-safe alphabet
    # and missing padding on input; accept the same, nothing looser.
    if not isinstance(value, str):
        raise BundleError(f"{what} is not a base64 string")
    text = value.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{what} is not valid base64") from exc


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{what} is not a JSON object")
    return value


def _envelope(raw: object) -> Envelope:
    env = _obj(raw, "dsseEnvelope")
    payload_type = env.get("payloadType")
    if not isinstance(payload_type, str):
        raise BundleError("dsseEnvelope.payloadType is missing")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise BundleError("dsseEnvelope.signatures is missing or empty")
    signatures = []
    for i, item in enumerate(sigs):
        entry = _obj(item, f"dsseEnvelope.signatures[{i}]")
        keyid = entry.get("keyid", "")
        signatures.append(EnvelopeSignature(
            sig=_b64(entry.get("sig"), f"dsseEnvelope.signatures[{i}].sig"),
            keyid=keyid if isinstance(keyid, str) else ""))
    return Envelope(payload=_b64(env.get("payload"), "dsseEnvelope.payload"),
                    payload_type=payload_type, signatures=tuple(signatures))


def parse_bundle(data: bytes) -> Bundle:
    """Parse a bundle's JSON; raise :class:`BundleError` when it is not a usable bundle."""
    try:
        doc = strictjson.loads(data)
    except strictjson.StrictJSONError as exc:
        raise BundleError(f"not a valid JSON bundle: {exc}") from exc
    doc = _obj(doc, "the bundle")
    media_type = doc.get("mediaType")
    if not isinstance(media_type, str) or media_type not in MEDIA_TYPES:
        raise BundleError(f"unsupported bundle media type {media_type!r}")
    if "dsseEnvelope" not in doc:
        if "messageSignature" in doc:
            raise BundleError("the bundle holds a plain message signature, not a DSSE "
                              "envelope over a model manifest")
        raise BundleError("the bundle has no dsseEnvelope")
    envelope = _envelope(doc["dsseEnvelope"])
    material = _obj(doc.get("verificationMaterial"), "verificationMaterial")

    hint: str | None = None
    has_key = "publicKey" in material
    if has_key:
        key = _obj(material["publicKey"], "verificationMaterial.publicKey")
        raw_hint = key.get("hint")
        hint = raw_hint if isinstance(raw_hint, str) and raw_hint else None
        if hint is not None:
            try:
                hint.encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError("publicKey.hint is not valid Unicode (a lone surrogate "
                                  "escape)") from None

    certs: list[bytes] = []
    if "x509CertificateChain" in material:
        chain = _obj(material["x509CertificateChain"], "verificationMaterial.x509CertificateChain")
        items = chain.get("certificates")
        if not isinstance(items, list) or not items:
            raise BundleError("x509CertificateChain.certificates is missing or empty")
        for i, item in enumerate(items):
            certs.append(_b64(_obj(item, "certificate").get("rawBytes"),
                              f"x509CertificateChain.certificates[{i}].rawBytes"))
    elif "certificate" in material:  # v0.3 bundles carry the signing certificate alone
        certs.append(_b64(_obj(material["certificate"], "certificate").get("rawBytes"),
                          "verificationMaterial.certificate.rawBytes"))
    if has_key and certs:
        raise BundleError("the verification material names both a public key and certificates")
    if not has_key and not certs:
        raise BundleError("the verification material has neither a public key nor certificates")
    return Bundle(media_type=media_type, envelope=envelope, key_hint=hint,
                  certificates=tuple(certs), has_public_key=has_key)


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
