"""Positive identification of files that are not models, for folder walks.

A folder walk may leave a file out of its verdict only when the file's *content* is
identified here as something no model loader reads (text and JSON, images, PDF,
audio, a sentencepiece tokenizer) and its name does not announce a model. Anything
else that the scanner did not recognise is reported "not scanned" and fails the run:
a ``pytorch_model.bin`` of unknown content must never vanish from a report.

Most identification happens after the content scan found no format and nothing
dangerous (text can be a protocol-0 pickle). Only signatures that end every pickle
loader within their own bytes (PNG, JPEG, PDF, ...) are identified first, and then only
when no zip directory hides in the file.
"""

from __future__ import annotations

import codecs
from typing import BinaryIO

__all__ = ["MODEL_NAMES", "dead_magic_kind", "identify_non_model", "is_model_name", "is_text"]

# Names that announce a model file: such a file is never skipped, whatever its content.
MODEL_NAMES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz",
               ".safetensors", ".pt2", ".pb", ".h5", ".hdf5", ".keras", ".onnx", ".gguf",
               ".ggml", ".msgpack", ".mar", ".nemo", ".tar", ".bin", ".dat",
               ".sav", ".dill", ".cloudpickle", ".torch", ".pytorch", ".weights")

_TEXT_LIMIT = 256 << 20  # whole-file text check; a bigger "text" file is reported instead
_CHUNK = 1 << 20
# Control characters that real text files contain; any other (NUL above all) means binary.
_ALLOWED_BYTES = b"\t\n\r\f\v\x1b" + bytes(range(0x20, 0x100))

# Signatures whose own first bytes end every pickle loader (C and Python unpicklers, with
# or without a persistent_load): an invalid opcode, a stack underflow, or an unparsable
# INT line within the signature. Such a file is identified before any content scan.
# GIF is not here: its "G" is BINFLOAT, which swallows bytes an attacker chooses.
_DEAD_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),  # NEWFALSE, PERSID "NG\r", then 0x1a: no opcode
    (b"\xff\xd8\xff", "JPEG image"),  # 0xff: no opcode
    (b"II*\x00", "TIFF image"),  # INT "I*\0...": not a number
    (b"MM\x00*", "TIFF image"),  # BININT2, then "*": no opcode
    (b"%PDF-", "PDF document"),  # "%": no opcode
    (b"fLaC", "FLAC audio"),  # "f": no opcode
    (b"OggS", "Ogg media"),  # "O": no opcode
    (b"ID3", "MP3 audio"),  # INT "D3...": not a number
    (b"RIFF", "RIFF media"),  # REDUCE on an empty stack
)
# Identified only after the content scan found nothing (their bytes could be opcodes).
_LATE_MAGIC = (
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
)


def dead_magic_kind(head: bytes) -> str | None:
    """The non-model format whose signature no pickle loader can get past, if ``head``
    starts with one."""
    for magic, kind in _DEAD_MAGIC:
        if head.startswith(magic):
            return kind
    return None


def is_model_name(name: str) -> bool:
    """Whether a file name announces a model (such files are never skipped)."""
    return name.lower().endswith(MODEL_NAMES)


def identify_non_model(fh: BinaryIO, size: int) -> str | None:
    """What the file is when it is positively not a model ("text", "PNG image"), else None."""
    fh.seek(0)
    head = fh.read(16)
    for magic, kind in (*_DEAD_MAGIC, *_LATE_MAGIC):
        if head.startswith(magic):
            return kind
    if is_text(fh, size):
        return "text"
    if _is_sentencepiece(fh, size):
        return "sentencepiece tokenizer model"
    return None


def is_text(fh: BinaryIO, size: int) -> bool:
    """The whole file is UTF-8 text without NUL or other binary control characters."""
    if size > _TEXT_LIMIT:
        return False
    fh.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    while True:
        chunk = fh.read(_CHUNK)
        if not chunk:
            break
        if chunk.translate(None, _ALLOWED_BYTES):  # anything left is a binary control byte
            return False
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError:
            return False
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("bad varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level protobuf fields (number, wire type, value); raises on any malformation."""
    out: list[tuple[int, int, bytes | int]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field 0")
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, wire, value))
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if i + width > len(data):
                raise ValueError("short fixed field")
            out.append((number, wire, data[i:i + width]))
            i += width
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("short field")
            out.append((number, wire, data[i:i + length]))
            i += length
        else:
            raise ValueError("group or unknown wire type")
    return out


def _is_sentencepiece(fh: BinaryIO, size: int) -> bool:
    """A sentencepiece ``ModelProto``: only fields 1-5, all messages, the first a piece
    (string piece, float score), parsing to the last byte."""
    if size > 64 << 20 or size < 4:
        return False
    fh.seek(0)
    data = fh.read(size)
    try:
        top = _fields(data)
        if not top or top[0][0] != 1:
            return False
        if any(not 1 <= n <= 5 or wire != 2 for n, wire, _ in top):
            return False
        first = top[0][2]
        if not isinstance(first, bytes):
            return False
        piece = _fields(first)
    except ValueError:
        return False
    kinds = {(n, wire) for n, wire, _ in piece}
    return (1, 2) in kinds and (2, 5) in kinds
