"""Writing tensors as safetensors or numpy ``.npz``, atomically, with dtypes handled openly.

safetensors keeps every dtype torch and safehub exchange (bfloat16 and float8
included; MLX reads bfloat16 natively and float8 as uint8). ``.npz`` holds numpy
arrays, which MLX (``mlx.core.load``) and numpy read directly, but numpy has no
bfloat16 and no float8: bfloat16 tensors are refused unless the caller asks for an
upcast to float32 (exact: every bfloat16 value is a float32 value), and float8
tensors are always refused (no lossless numpy type holds them).

A file is written to a temporary name in the target folder, flushed to disk and
renamed into place: a crash or an error never leaves a partial file under the
final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from safehub._tree import write_atomic as _write_atomic
from safehub.errors import SafehubError

__all__ = ["OutputFormat", "file_sha256", "prepare", "write_atomic", "write_json",
           "write_tensors"]


class OutputFormat(str, Enum):
    """What ``convert`` writes."""

    SAFETENSORS = "safetensors"
    NPZ = "npz"

    @property
    def suffix(self) -> str:
        return f".{self.value}"


# torch dtype name -> numpy dtype name, for what numpy can hold exactly.
_NUMPY = {
    "bool": "bool", "uint8": "uint8", "int8": "int8", "int16": "int16", "uint16": "uint16",
    "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
    "float16": "float16", "float32": "float32", "float64": "float64",
    "complex64": "complex64", "complex128": "complex128",
}


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _keys_list(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:8])
    return shown + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def prepare(tensors: Mapping[str, Any], fmt: OutputFormat, *, upcast_bfloat16: bool,
            subject: str) -> tuple[dict[str, Any], list[str]]:
    """The tensors ready to write, and the keys that were upcast from bfloat16.

    Raises SafehubError naming every key that cannot be written in ``fmt``.
    """
    import torch

    out: dict[str, Any] = {}
    problems: dict[str, list[str]] = {}
    upcast: list[str] = []
    seen_storage: set[tuple[int, int]] = set()
    for key, value in tensors.items():
        if not isinstance(key, str):
            problems.setdefault("keys that are not strings", []).append(repr(key))
            continue
        if not isinstance(value, torch.Tensor):
            problems.setdefault("values that are not tensors", []).append(key)
            continue
        t = value.detach()
        if t.layout != torch.strided or t.is_quantized or t.is_nested:
            problems.setdefault("sparse, quantized or nested tensors", []).append(key)
            continue
        if t.device.type != "cpu":
            t = t.cpu()
        name = _dtype_name(t)
        if fmt is OutputFormat.NPZ and name not in _NUMPY:
            if name == "bfloat16" and upcast_bfloat16:
                t = t.to(torch.float32)
                upcast.append(key)
            else:
                problems.setdefault(f"{name} tensors (numpy has no {name})", []).append(key)
                continue
        t = t.contiguous()
        if t.numel():
            storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if storage in seen_storage:
                t = t.clone()  # tied weights: each key gets its own bytes
            seen_storage.add(storage)
        out[key] = t
    if problems:
        lines = "; ".join(f"{why}: {_keys_list(keys)}" for why, keys in problems.items())
        bf16 = any("bfloat16" in why for why in problems)
        keeps = ("which keeps bfloat16 (torch, MLX and numpy-free loaders read it)" if bf16
                 else "which keeps every torch dtype")
        fix = (("pass upcast_bfloat16=True to store bfloat16 as float32 (exact, twice the "
                "size), or " if bf16 else "") + f"write format='safetensors', {keeps}")
        cli_fix = (("pass --upcast-bfloat16 to store bfloat16 as float32 (exact, twice the "
                    "size), or " if bf16 else "") + f"write --format safetensors, {keeps}")
        raise SafehubError(f"cannot write {fmt.value}: {lines}", subject=subject, fix=fix,
                           cli_fix=cli_fix)
    return out, upcast


def write_atomic(path: Path, write: Callable[[BinaryIO, str], None]) -> None:
    """Call ``write(file, temp_path)`` on a temporary file beside ``path``, then rename it
    into place; on any error nothing is left behind (:func:`safehub._tree.write_atomic`).

    Raises SafehubError when the file cannot be written (space, permissions, limits).
    """
    from safetensors import SafetensorError

    _write_atomic(path, write, failures=(OSError, SafetensorError))


def write_tensors(tensors: Mapping[str, Any], path: Path, fmt: OutputFormat,
                  metadata: Mapping[str, str] | None = None) -> None:
    """Write prepared tensors (see :func:`prepare`) atomically."""
    if fmt is OutputFormat.SAFETENSORS:
        from safetensors.torch import save_file

        def write_st(_fh: BinaryIO, tmp: str) -> None:
            save_file(dict(tensors), tmp, metadata=dict(metadata or {"format": "pt"}))

        write_atomic(path, write_st)
        return
    import zipfile

    import numpy as np

    def write_npz(fh: BinaryIO, _tmp: str) -> None:
        # As numpy.savez, but any key works (savez's own parameters, such as `file` or
        # `allow_pickle`, cannot be array names there) and no pickle is ever written.
        with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            for key, t in tensors.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, t.numpy(), allow_pickle=False)

    write_atomic(path, write_npz)


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically."""
    body = (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")

    def write(fh: BinaryIO, _tmp: str) -> None:
        fh.write(body)

    write_atomic(path, write)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
