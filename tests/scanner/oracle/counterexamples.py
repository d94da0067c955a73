"""Inputs on which the differential fuzzer once found the scanner wrong: (reader, bytes).

Each is replayed against every pickle reader by test_oracle. Add new ones as found.
"""

from __future__ import annotations

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
