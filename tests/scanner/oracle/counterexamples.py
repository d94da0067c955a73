"""Inputs on which the differential fuzzer once found the scanner wrong: (reader, bytes).

Each is replayed against every pickle reader by test_oracle. Add new ones as found.
"""

from __future__ import annotations

import base64
import zlib

COUNTEREXAMPLES: list[tuple[str, bytes]] = [
    # pickle._Unpickler reads the last line without its newline and cuts its last byte
    ("py", b"\x80\x02cos.path\njoin"),
    ("py", b"\x80\x02cUserDict\nU\x00serDt"),
    ("py", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00V\\N{DIGIT ONE}\ncnu"),
    # Python float() accepts spaces; PyOS_string_to_double does not
    ("py", b"F1.0 \n]cUserDict\nUserDict\n0."),
    ("py", b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00V\nF1.0\r\n0."),
    # pickle._Unpickler reads a short frame without complaint
    ("py", b"\x80\x05\x95\x19\x00\x00\x00\x00\x00\x00\x00V\\N{DIGIT ONE}\n."),
    ("py", b"\x80\x03}(F 1.0\n\x88}(\x8a\x033\xe2+\x8c\x05posix\x8c\x06system\x93L0X1F\nq"
           b"\x00\x85RcUserDict\nUserDict\n\x8c\x0b__builtin__\x8c\x04eval\x93)RS\"a\"\nr"
           b"\x01\x00\x00\x00bq\x02uJ\xea\xfa\x06\xcfuq\x03."),
    ("py", b"\x80\x01\x8a\x01&0]F1_0\na\x8c\x05torch\x8c\x0cFloatStorage\x93)RL010\nbr\x00"
           b"\x00\x00\x00(I0x\nP\nimarker.mod\nhit\n(."),
    ("py", b"\x80\x02K\xa8p0\n\x85J\xf1\x0e\xf2\xd1r\x01\x00\x00\x000cUserDictserDict\n."),
    # INST: pickle._Unpickler imports before it looks for the MARK
    ("py", b"\x80\x05\x954\x00\x00\x00\x00\x00\x00\x00((C\x03\x90L\rQicopy_reg\xc3\xa9\n"
           b"_reconstructor\nibuiltins\neval\n."),
]
COUNTEREXAMPLES += [
    # _pickle.c reads the data of SHORT_BINBYTES (and BINBYTES, BINBYTES8, BYTEARRAY8) with
    # _Unpickler_ReadInto: the rest of the frame joined with the file, not dropped
    ("c_file", b"\x80\x05\x95\x10\x00\x00\x00\x00\x00\x00\x00K\x94p1_0\n\x8c\x01aq\x01C\x04\x8b"
               b"\xb5b\x17p1_0\nL 5\n0."),
]
COUNTEREXAMPLES += [
    # PERSID's last line without newline: pickle._Unpickler calls persistent_load on it
    ("py", b"\x80\x03P\x05"),
    ("py", b"M\xe0\x1b\x94Px"),
]

# torch.load(path) reads its raw legacy records through a buffered file with peek: after a
# STOP inside a frame the next record starts after the STOP (make fuzz, seeds 5017-5035).
_LEGACY_HEAD = (b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03."
                + b"\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03X\r"
                b"\x00\x00\x00little_endianq\x02\x88X\n\x00\x00\x00type_sizesq\x03}q\x04(X"
                b"\x05\x00\x00\x00shortq\x05K\x02X\x03\x00\x00\x00intq\x06K\x04X\x04\x00"
                b"\x00\x00longq\x07K\x04uu.")
LEGACY_COUNTEREXAMPLES: list[bytes] = [
    _LEGACY_HEAD
    + b'\x80\x04\x95!\x00\x00\x00\x00\x00\x00\x00ctorch._utils\n_rebuild_tensor'
    + b'_v2\n\x95\x1b\x00\x00\x00\x00\x00\x00\x00]J+Q\x85\xc1p2\na\x85RV\\N{DIGIT ONE}\n'
    + b'\x95\x03\x00\x00\x00\x00\x00\x00\x00.\x80\x02]q\x00.\xaf\x9dKn\x83\xedQ\x10',
    _LEGACY_HEAD
    + b'\x80\x05\x95\x08\x00\x00\x00\x00\x00\x00\x00U\x03k_]\x8c\nma'
    + b'rker.mod\x8c\x03hit\x93\x94\x95\x06\x00\x00\x00'
    + b'\x00\x00\x00\x000NI07\n\x940.\x80\x02]q\x00.',
    _LEGACY_HEAD
    + b"\x80\x05\x95'\x00\x00\x00\x00\x00\x00\x00}(uc__builtin__\nset\nr\x00\x00\x00\x000]}("
    + b"S' '\n0NC\x000\x95\x0c\x00\x00\x00\x00\x00\x00\x00N"
    + b'uq\x01aJ\x9c\x11\xfe0\x95\x01\x00\x00\x00\x00\x00\x00\x00.\x80'
    + b"\x05\x95'\x00\x00\x00\x00\x00\x00\x00}(uc__builtin__\nset\nr\x00\x00\x00\x000]}(S"
    + b"' '\n0NC\x000\x95\x0c\x00\x00\x00\x00\x00\x00\x00Nu"
    + b'q\x01aJ\x9c\x11\xfe0\x95\x01\x00\x00\x00\x00\x00\x00\x00.B\xf6'
    + b'\xbdD4gd\x88',
    # a GLOBAL line cut by its frame: each reading names another global at the same
    # offset, and both must be kept (make fuzz, seed 7057)
    _LEGACY_HEAD
    + b'\x80\x05\x95"\x00\x00\x00\x00\x00\x00\x00\x8c\x08UserDic'
    + b't\x8c\x08UserDict\x93cbuiltin'
    + b's\neval\n]KFa\x85R\x85R\x94L 5\n'
    + b'p1\n(.\x80\x02]q\x00.\x82\x8f\xad\x0c\xa9j\x8a\x0ct'
    + b'\xb7\xcf\xbbk\x7f\xf8x',
    # the storage-keys record hidden in the object's last frame, after its STOP
    _LEGACY_HEAD + b"\x80\x04\x95\x0e\x00\x00\x00\x00\x00\x00\x00N.cos\nsystem\n."
    + b"\x80\x02]q\x00.",
]

# A legacy tar whose storages count is computed by its first pickle: torch runs range() on
# it and reads the next records, which the scanner then did not analyze (make fuzz, seed
# 9098). Stored compressed (3.5 KB of tar headers): zlib, base64.
LEGACY_TAR_COUNTEREXAMPLES: list[bytes] = [zlib.decompress(base64.b64decode(
    "eNrt1D1Lw0AYB/BLg4I3uguOuoRrmjaji9SX+oKviFRCeg0ajUnMXUQFoZMvJZO6uTi7C0L9Nn4RQ1utBKRTK+j/"
    "tzzhOHJ33P0f6fgiiAQZJJYqGUa7prKVMbPU+26PmwWTkUlGhiAW0o7SJcn/VFG0Rq6iVAiXQcQPaNkLbLnZfhT0"
    "WlO6s3LdqhD4W0R67fa+I34z/4WSkc1/UdeR/2Fo5LbFuZDOMWWLredWyJKRMBDuWTLaGb5/YA2V88DzHC7dwBd0"
    "Nao7kVOfdbmkTfVVr2rcsmqx60nXtyzqnNoenV7ngdBCWx7Qw8D1ae2mqUyUCWXL40/a5dSP/1sYM+kJWZubed99"
    "mX+8uGuqV29JmGc0/twP21KXbqssUWy2onWaF9lR04PwMP7ewjY67zrtYbnMifc0pL4ndPmR5wx2jX75181iNv95"
    "o4D8I/998o/4AgAAAAAAAAAAAAAAAAB8+QDb28kW"))]
