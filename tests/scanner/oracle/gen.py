"""Grammar-aware generation and mutation of pickle streams and the containers that hold them.

Everything is drawn from a ``random.Random`` passed in, so a seed reproduces an input.
Programs are built from opcode templates that keep the stack mostly valid (so inputs get
past the first opcodes), with every text argument drawn from the syntax corners of
``_pickle.c`` (NULs, spaces, underscores, bases, quotes, overflow), frames cut at any byte
(inside opcode arguments too), protocol switches and memo traffic; then mutated at the
byte level.
"""

from __future__ import annotations

import io
import itertools
import random
import struct
import tarfile
import zipfile

__all__ = ["container", "legacy_stream", "legacy_tar", "mutate", "pickle_program"]

NAMES = [("os", "system"), ("builtins", "eval"), ("__builtin__", "eval"), ("posix", "system"),
         ("collections", "OrderedDict"), ("copy_reg", "_reconstructor"),
         ("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage"),
         ("numpy", "dtype"), ("marker.mod", "hit"), ("os.path", "join"),
         ("builtins", "getattr"), ("__builtin__", "set"), ("UserDict", "UserDict")]
LINE_VARIANTS = [b"", b"\r", b"\0", b"\0x", b" ", b".x", b"\xff", b"\xc3\xa9"]
FLOATS = [b"1.0", b"1.0\0zz", b" 1.0", b"1.0 ", b"1_0", b"inf", b"-Infinity", b"nan", b"+nan",
          b"1e999", b"-1e999", b"1e-999", b".5", b"5.", b"1e", b"1e+", b"0x10", b"\0", b"1.0\r",
          b"+.5E-3", b"nAn", b"INFINITY", b"in", b"1.e5", b"-.e5", b"\xd9\xa1", b"00.0",
          b"1" * 400, b"0." + b"0" * 300 + b"1"]
INTS = [b"0", b"00", b"01", b"010", b" 5", b"5 ", b"1_0", b"\0", b" \0", b"-", b"0x", b"0x1f",
        b"0X1F", b"0x1g", b"99999999999999999999", b"+0b1", b"0o7", b"1\0junk", b"\x0b5",
        b"-9223372036854775808", b"9223372036854775808", b"9223372036854775807", b"0_1",
        b"1L", b"\t7", b"-0", b"+", b"07", b"08", b"1" * 30, b"\xd9\xa1"]
LONGS = [*INTS, b"5L", b"L", b"0L", b"-1L", b"1LL", b"0x10L"]
MEMO = [b"0", b"1", b"2", b" 1", b"1 ", b"1_0", b"+1", b"01", b"1\0x", b"-1", b"3", b"0x1",
        b"10", b"99999999999999999999"]
STRINGS = [b"'a'", b'"a"', b"'a", b"'\\x41'", b"'\\q'", b"'\\x4'", b"''", b"'\xff'", b"'a\"",
           b"'\\''", b"'os'", b"'system'", b"' '", b"'\\n'", b"'\\0'", b"'"]
UNICODES = [b"abc", b"\\u0041", b"\\u12", b"\xff", b"a\\", b"os", b"system", b"\\N{DIGIT ONE}",
            b"\\x41", b""]
EXT_CODES = [1, 2, 255, 256, 0xFFFF, 1 << 16, (1 << 31) - 1, 0, -1]


def _short(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


class _Program:
    def __init__(self, rng: random.Random, proto: int):
        self.rng = rng
        self.proto = proto
        self.ops: list[bytes] = []
        self.memo = 0

    def value(self, depth: int = 0) -> None:
        """Ops that push exactly one value (when they parse)."""
        r = self.rng
        kind = r.randrange(26 if depth < 3 else 18)
        o = self.ops
        if kind == 0:
            o.append(b"K" + bytes([r.randrange(256)]))
        elif kind == 1:
            o.append(b"J" + struct.pack("<i", r.randrange(-(1 << 31), 1 << 31)))
        elif kind == 2:
            o.append(b"I" + r.choice(INTS) + b"\n")
        elif kind == 3:
            o.append(b"L" + r.choice(LONGS) + b"\n")
        elif kind == 4:
            o.append(b"F" + r.choice(FLOATS) + b"\n")
        elif kind == 5:
            o.append(b"S" + r.choice(STRINGS) + b"\n")
        elif kind == 6:
            o.append(b"V" + r.choice(UNICODES) + b"\n")
        elif kind == 7:
            o.append(_short(r.choice(["a", "os", "system", "é", ""])))
        elif kind == 8:
            data = bytes(r.randrange(256) for _ in range(r.randrange(6)))
            o.append(r.choice([b"C" + bytes([len(data)]) + data,
                               b"B" + struct.pack("<I", len(data)) + data,
                               b"U" + bytes([len(data)]) + data,
                               b"T" + struct.pack("<i", len(data)) + data,
                               b"\x8e" + struct.pack("<Q", len(data)) + data,
                               b"\x96" + struct.pack("<Q", len(data)) + data,
                               b"X" + struct.pack("<I", len(data)) + data.decode("latin-1")
                               .encode()[:len(data)]]))
        elif kind == 9:
            o.append(r.choice([b"N", b"\x88", b"\x89", b")", b"]", b"}", b"\x8f"]))
        elif kind == 10:
            n = r.randrange(1, 4)
            o.append(b"\x8a" + bytes([n]) + bytes(r.randrange(256) for _ in range(n)))
        elif kind == 11:
            o.append(b"G" + struct.pack(">d", r.random()))
        elif kind == 12 and self.memo:
            idx = r.randrange(self.memo + 1)
            o.append(r.choice([b"h" + bytes([idx % 256]), b"j" + struct.pack("<I", idx),
                               b"g" + r.choice([str(idx).encode(), *MEMO]) + b"\n"]))
        elif kind == 13:
            o.append(b"M" + struct.pack("<H", r.randrange(1 << 16)))
        elif kind in (14, 15, 16, 17):
            self.global_()
        elif kind in (18, 19, 20):
            self.call(depth)
        elif kind == 21:
            o.append(b"(")
            for _ in range(r.randrange(4)):
                self.value(depth + 1)
            o.append(r.choice([b"t", b"l", b"\x91", b"d"]))
        elif kind == 22:
            self.value(depth + 1)
            o.append(r.choice([b"\x85", b"2"]))
            if o[-1] == b"2":
                o.append(b"\x86")
        elif kind == 23:
            o.append(b"}(")
            for _ in range(r.randrange(3)):
                self.value(depth + 1)
                self.value(depth + 1)
            o.append(b"u")
        elif kind == 24:
            o.append(b"]")
            self.value(depth + 1)
            o.append(b"a")
        else:
            self.value(depth + 1)
            o.append(r.choice([b"Q", b"P" + r.choice([b"x", b"\xff", b""]) + b"\n", b"0N"]))
        if r.random() < 0.25:
            self.put()

    def put(self) -> None:
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:
            self.ops.append(b"q" + bytes([self.memo % 256]))
        elif choice == 1:
            self.ops.append(b"r" + struct.pack("<I", self.memo))
        elif choice == 2:
            self.ops.append(b"p" + r.choice([str(self.memo).encode(), *MEMO]) + b"\n")
        else:
            self.ops.append(b"\x94")
        self.memo += 1

    def global_(self) -> None:
        r = self.rng
        module, name = r.choice(NAMES)
        m, n = module.encode(), name.encode()
        if r.random() < 0.2:
            m += r.choice(LINE_VARIANTS)
        if r.random() < 0.2:
            n += r.choice(LINE_VARIANTS)
        form = r.randrange(5)
        if form in (0, 1):
            self.ops.append(b"c" + m + b"\n" + n + b"\n")
        elif form in (2, 3):
            self.ops.append(_short(module) + _short(name) + b"\x93")
        else:
            code = r.choice(EXT_CODES)
            if 0 < code < 256:
                self.ops.append(b"\x82" + bytes([code]))
            elif 0 < code < 1 << 16:
                self.ops.append(b"\x83" + struct.pack("<H", code))
            else:
                self.ops.append(b"\x84" + struct.pack("<i", code))

    def call(self, depth: int) -> None:
        r = self.rng
        form = r.randrange(6)
        if form == 0:  # REDUCE
            self.global_()
            self.value(depth + 1)
            self.ops.append(b"\x85R")
        elif form == 1:  # NEWOBJ / NEWOBJ_EX
            self.global_()
            self.ops.append(b")")
            if r.random() < 0.5:
                self.ops.append(b"\x81")
            else:
                self.ops.append(b"}\x92")
        elif form == 2:  # INST
            module, name = r.choice(NAMES)
            self.ops.append(b"(")
            self.value(depth + 1)
            self.ops.append(b"i" + module.encode() + r.choice([b"", *LINE_VARIANTS]) + b"\n"
                            + name.encode() + b"\n")
        elif form == 3:  # OBJ
            self.ops.append(b"(")
            self.global_()
            self.value(depth + 1)
            self.ops.append(b"o")
        elif form == 4:  # BUILD
            self.global_()
            self.ops.append(b")R")
            self.value(depth + 1)
            self.ops.append(b"b")
        else:  # a name made of two strings on the stack
            self.value(depth + 1)
            self.value(depth + 1)
            self.ops.append(b"\x93")


def pickle_program(rng: random.Random) -> bytes:
    """One pickle stream: header, values, frames, STOP."""
    proto = rng.choice([0, 1, 2, 3, 4, 5, 5])
    prog = _Program(rng, proto)
    for _ in range(rng.randrange(1, 6)):
        prog.value()
        if rng.random() < 0.3:
            prog.ops.append(b"0")
        if rng.random() < 0.1:
            prog.ops.append(b"\x80" + bytes([rng.choice([0, 2, 3, 4, 5, 6])]))
    if rng.random() < 0.1:
        prog.ops.append(b"(")
    prog.ops.append(b".")
    body = b"".join(prog.ops)
    head = b"\x80" + bytes([proto]) if proto >= 2 or rng.random() < 0.3 else b""
    if proto >= 4 and rng.random() < 0.8:
        body = _frame(rng, body, prog.ops)
    if rng.random() < 0.15:  # a second stream
        body += pickle_program(rng)
    return head + body


def _frame(rng: random.Random, body: bytes, ops: list[bytes]) -> bytes:
    """Cut ``body`` into frames: at opcode boundaries, or anywhere (inside arguments)."""
    bounds = [0]
    pos = 0
    for op in ops:
        pos += len(op)
        bounds.append(pos)
    cuts = sorted({rng.choice(bounds) if rng.random() < 0.5 else rng.randrange(len(body) + 1)
                   for _ in range(rng.randrange(1, 4))} | {0, len(body)})
    out = []
    for a, b in itertools.pairwise(cuts):
        length = b - a
        if rng.random() < 0.1:
            length += rng.choice([-2, -1, 1, 2, 9])
        if rng.random() < 0.85:
            out.append(b"\x95" + struct.pack("<Q", max(length, 0)))
        out.append(body[a:b])
    return b"".join(out)


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif kind == 1:
            buf[pos:pos] = rng.choice([b"\0", b"\n", b"(", b"0", b".", b"\x95", b"\x94",
                                       b"\x93", b"R", b"b", b"c", b"F1.0\0\n", b"\x80\x02"])
        elif kind == 2 and buf:
            del buf[pos:pos + rng.randrange(1, 4)]
        elif kind == 3:
            del buf[pos:]
        elif kind == 4:
            buf[pos:pos] = buf[rng.randrange(len(buf) + 1):][:rng.randrange(1, 16)]
        else:
            buf[pos:pos] = _short("os") + _short("system") + b"\x93"
    return bytes(buf)


# torch's legacy raw stream: pickled magic number, protocol version and system info.
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
LEGACY_PROTOCOL = b"\x80\x02M\xe9\x03."
LEGACY_SYS_INFO = (b"\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03X"
                   b"\r\x00\x00\x00little_endianq\x02\x88X\n\x00\x00\x00type_sizesq"
                   b"\x03}q\x04(X\x05\x00\x00\x00shortq\x05K\x02X\x03\x00\x00\x00intq"
                   b"\x06K\x04X\x04\x00\x00\x00longq\x07K\x04uu.")
LEGACY_KEYS = b"\x80\x02]q\x00."
# A legacy tar's storages member with one float storage of 2 elements, and its tensors
# member with one 1-d tensor (key 1) on it (torch's records, as torch < 0.1.10 wrote them).
_STORAGE_RECORD = b"\x80\x02K\x00X\x03\x00\x00\x00cpuctorch\nFloatStorage\n\x87."
_TENSOR_RECORD = b"\x80\x02K\x01K\x00ctorch\nFloatTensor\n\x87."


def legacy_stream(rng: random.Random, pkl: bytes) -> bytes:
    """torch's legacy raw format (``_use_new_zipfile_serialization=False``) around ``pkl``:
    usually as the object, sometimes in the place of another record."""
    records = [LEGACY_MAGIC, LEGACY_PROTOCOL, LEGACY_SYS_INFO, pkl, LEGACY_KEYS]
    if rng.random() < 0.3:
        records[rng.randrange(5)] = pkl
    if rng.random() < 0.2:
        del records[rng.randrange(5)]
    return b"".join(records) + bytes(rng.randrange(256) for _ in range(rng.randrange(3) * 8))


def legacy_tar(rng: random.Random, pkl: bytes) -> bytes:
    """torch's legacy tar format (members ``storages``, ``tensors``, ``pickle``) with
    ``pkl`` as one of its pickles; member order, duplicates and formats vary."""
    storages = (b"K\x01." + _STORAGE_RECORD + struct.pack("<q", 2) + b"\0" * 8 + b"].")
    tensors = (b"K\x01." + _TENSOR_RECORD + struct.pack("<ii", 1, 0)
               + struct.pack("<qqq", 2, 1, 0))
    members = {"storages": storages, "tensors": tensors, "pickle": pkl}
    where = rng.randrange(6)
    if where == 1:
        members["storages"] = pkl + storages
    elif where == 2:
        members["storages"] = b"K\x01." + pkl + struct.pack("<q", 2) + b"\0" * 8 + b"]."
    elif where == 3:
        members["tensors"] = b"K\x01." + pkl + tensors[3 + len(_TENSOR_RECORD):]
    elif where == 4:
        members["storages"] = b"K\x00." + pkl
    order = list(members.items())
    if rng.random() < 0.3:
        rng.shuffle(order)
    if rng.random() < 0.15:
        name = rng.choice(list(members))
        order.append((name, rng.choice([pkl, b"N.", members[name]])))
    if rng.random() < 0.1:
        del order[rng.randrange(len(order))]
    fmt = rng.choice([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in order:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = buf.getvalue()
    if rng.random() < 0.3:  # header or data damage: tarfile fails, or reads other bytes
        out = mutate(rng, out)
    return out


def container(rng: random.Random, pkl: bytes) -> tuple[str, bytes]:
    """``pkl`` inside a container a loader reads: (reader, file bytes)."""
    kind = rng.randrange(6)
    if kind == 4:
        return "torch_legacy", legacy_stream(rng, pkl)
    if kind == 5:
        return "torch_legacy", legacy_tar(rng, pkl)
    if kind == 0:
        buf = io.BytesIO()
        method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
        with zipfile.ZipFile(buf, "w", method) as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/byteorder", b"little")
            zf.writestr("archive/version", b"3\n")
        return "torch_zip", buf.getvalue()
    if kind == 1:
        header = b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
        header += b" " * (63 - len(header) % 64) + b"\n"
        return "numpy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + pkl
    if kind == 2:
        buf = io.BytesIO()
        header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
        header += b" " * (63 - len(header) % 64) + b"\n"
        npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + pkl
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("a.npy", npy)
        return "numpy", buf.getvalue()
    return "joblib", pkl
