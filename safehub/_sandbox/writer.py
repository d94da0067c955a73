"""Child side of the result: tensors written as safetensors into a sealed memfd.

The memfd is the parent's: it comes with the call (the sandbox may not create memory
files, whose pages no rlimit counts), and the parent accepts no other file back.

One copy: the memfd is sized once and each tensor is written (pwrite) straight
from its own storage into its place (no ``safetensors.save`` bytes, no pipe). Each
tensor gets its own bytes, which also de-aliases tensors that shared storage. The
memfd is then sealed against writes, shrinking and growing, so the parent can map
it without the child being able to change it or truncate it under the mapping.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safehub._sandbox import dtypes

__all__ = ["SEALS", "Packed", "TensorProblem", "check_tensors", "pack"]

SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_CHUNK = 1 << 30  # pwrite moves at most ~2 GiB per call
_ALIGN = 8  # the data section starts 8-aligned; tensors are ordered by element size


class TensorProblem(Exception):
    """The value cannot cross as tensors; ``keys`` names the offending entries."""

    def __init__(self, message: str, keys: list[str]):
        super().__init__(message)
        self.keys = keys


@dataclass(frozen=True)
class Packed:
    """A sealed memfd holding the safetensors file, and facts about what went in."""

    fd: int
    size: int
    count: int
    aliased: list[list[str]]


def check_tensors(value: Mapping[Any, Any]) -> dict[str, Any]:
    """The mapping as ``{str: CPU tensor}``, or TensorProblem naming every bad key."""
    import torch

    bad_keys = [repr(k) for k in value if not isinstance(k, str)]
    if bad_keys:
        raise TensorProblem("keys must be strings", bad_keys)
    out: dict[str, Any] = {}
    problems: dict[str, list[str]] = {}
    for key, t in value.items():
        if key == "__metadata__":
            problems.setdefault("the name __metadata__ is reserved by safetensors", []).append(key)
        elif not isinstance(t, torch.Tensor):
            problems.setdefault("values are not tensors", []).append(
                f"{key} ({type(t).__module__}.{type(t).__qualname__})")
        elif t.layout != torch.strided or t.is_quantized or t.is_nested:
            problems.setdefault("tensors are sparse, quantized or nested", []).append(key)
        elif t.device.type != "cpu":
            problems.setdefault("tensors are not on the CPU", []).append(f"{key} ({t.device})")
        else:
            try:
                dtypes.name_of(t.dtype)
            except KeyError:
                problems.setdefault("tensors have a dtype that cannot cross", []).append(
                    f"{key} ({t.dtype})")
                continue
            out[key] = t
    if problems:
        text = "; ".join(f"{why}: {', '.join(keys[:10])}" + (" ..." if len(keys) > 10 else "")
                         for why, keys in problems.items())
        raise TensorProblem(text, [k for keys in problems.values() for k in keys])
    return out


def pack(tensors: Mapping[str, Any], fd: int) -> Packed:
    """Write the tensors into the empty memfd ``fd`` (the parent's, given with the call)
    and seal it; ``fd`` stays the caller's, returned in :class:`Packed`."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    spans: list[tuple[str, int, int]] = []
    for key in order:
        t = tensors[key]
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": dtypes.name_of(t.dtype), "shape": list(t.shape),
                       "data_offsets": [offset, offset + nbytes]}
        spans.append((key, offset, nbytes))
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(8 + len(head)) % _ALIGN)
    start = 8 + len(head)
    size = start + offset

    os.ftruncate(fd, size)
    _write_all(fd, memoryview(struct.pack("<Q", len(head)) + head), 0)
    for key, begin, nbytes in spans:
        if nbytes:
            # pwrite from the tensor's own memory: the kernel copies once into the
            # memfd (several times faster than faulting in a shared mapping).
            t = tensors[key].detach().resolve_conj().resolve_neg().contiguous()
            raw = (ctypes.c_char * nbytes).from_address(t.data_ptr())
            _write_all(fd, memoryview(raw).cast("B"), start + begin)
            del raw, t
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    return Packed(fd=fd, size=size, count=len(order), aliased=_aliased(tensors))


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:done + _CHUNK], offset + done)


def _aliased(tensors: Mapping[str, Any]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for key, t in tensors.items():
        if t.numel():
            groups.setdefault(t.untyped_storage().data_ptr(), []).append(key)
    return [sorted(keys) for keys in groups.values() if len(keys) > 1]
