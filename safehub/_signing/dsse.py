"""DSSE envelopes: the payload, its type, and signatures over the PAE encoding.

See https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IN_TOTO_PAYLOAD_TYPE", "Envelope", "EnvelopeSignature", "pae", "pae_legacy"]

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding: what a DSSE signature actually signs.

    Lengths are byte lengths, so neither the type nor the payload can be shifted
    into the other.
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def pae_legacy(payload_type: str, payload: bytes) -> bytes:
    """The encoding model_signing 0.2 signed by mistake (``DSSEV1`` and the payload's
    Python ``repr``). Its verifiers still accept it, so signatures from that release
    keep verifying; it is unambiguous, because the length is still encoded."""
    return f"DSSEV1 {len(payload_type)} {payload_type} {len(payload)} {payload!r}".encode()


@dataclass(frozen=True)
class EnvelopeSignature:
    """One signature in an envelope. ``keyid`` is an unauthenticated label."""

    sig: bytes
    keyid: str = ""


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: the signed payload bytes, their type, and one or more signatures."""

    payload: bytes
    payload_type: str
    signatures: tuple[EnvelopeSignature, ...]

    def signed_messages(self) -> tuple[bytes, bytes]:
        """The PAE bytes a signature may cover: the standard one, then the legacy one."""
        return pae(self.payload_type, self.payload), pae_legacy(self.payload_type, self.payload)
