"""Sparse torch zip checkpoints for the remote-scan tests and the registry benchmark.

A file of any apparent size whose tensor bytes are holes, laid out as ``torch.save`` writes
it, so a 10 GB checkpoint or a registry of terabytes takes a few KB of disk each. It lives
here, not under tests/, so the benchmarks import nothing from the tests.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


def sparse_torch_zip(path: Path, *, gib: float = 10.0, tensors: int = 200,
                     payload: object | None = None) -> Path:
    """A torch zip checkpoint of ``gib`` GiB whose tensor data are holes: ``data.pkl``
    (the real pickle torch writes for ``tensors`` float32 tensors, or ``payload``
    pickled as torch would), ``byteorder``, ``data/<i>`` stored members at 64-byte
    aligned offsets, zip64 records, as ``torch.save`` lays them out."""
    import struct
    import zlib

    per = int(gib * (1 << 30)) // max(1, tensors)
    per -= per % 4
    pickle_bytes = _torch_pickle(tensors, per // 4) if payload is None else payload
    if not isinstance(pickle_bytes, bytes):
        raise TypeError("payload must be the pickle bytes")
    entries: list[tuple[bytes, int, int, int]] = []  # name, offset, size, crc
    with open(path, "wb") as fh:
        def member(name: str, data: bytes | None, size: int) -> None:
            offset = fh.tell()
            full = f"archive/{name}".encode()
            header_len = 30 + len(full) + 4 + 16  # zip64 extra
            pad = (-(offset + header_len + 4)) % 64
            extra = struct.pack("<HHQQ", 1, 16, size, size)
            extra += struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            crc = zlib.crc32(data) if data is not None else 0
            fh.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 0, 0, 0, crc,
                                 0xFFFFFFFF, 0xFFFFFFFF, len(full), len(extra)))
            fh.write(full + extra)
            if data is not None:
                fh.write(data)
            else:
                fh.seek(size, os.SEEK_CUR)
            entries.append((full, offset, size, crc))

        member("data.pkl", pickle_bytes, len(pickle_bytes))
        member("byteorder", b"little", 6)
        for i in range(tensors):
            member(f"data/{i}", None, per)
        member("version", b"3\n", 2)
        member(".data/serialization_id", b"0123456789", 10)
        cd_start = fh.tell()
        for full, offset, size, crc in entries:
            extra = struct.pack("<HHQQQ", 1, 24, size, size, offset)
            fh.write(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 0, 0, 0,
                                 crc, 0xFFFFFFFF, 0xFFFFFFFF, len(full), len(extra), 0, 0, 0,
                                 0, 0xFFFFFFFF))
            fh.write(full + extra)
        cd_end = fh.tell()
        fh.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(entries),
                             len(entries), cd_end - cd_start, cd_start))
        fh.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, cd_end, 1))
        fh.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                             0xFFFFFFFF, 0))
    return path


@functools.lru_cache(maxsize=64)  # a registry repeats a few shapes
def _torch_pickle(tensors: int, numel: int) -> bytes:
    """The data.pkl ``torch.save`` writes for ``{"w<i>": float32 tensor of numel}``:
    ``_rebuild_tensor_v2`` records over persistent storage ids."""
    import io
    import pickle
    from collections import OrderedDict

    import torch

    class _Storage:
        def __init__(self, key: str) -> None:
            self.key = key

    class _Tensor:
        def __init__(self, storage: _Storage) -> None:
            self.storage = storage

        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (torch._utils._rebuild_tensor_v2,
                    (self.storage, 0, (numel,), (1,), False, OrderedDict()))

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", numel)
            return None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({f"w{i}": _Tensor(_Storage(str(i)))
                                    for i in range(tensors)})
    return buf.getvalue()
