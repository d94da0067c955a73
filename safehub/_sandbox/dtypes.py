"""The tensor element types that cross the boundary: safetensors name <-> torch dtype.

Only types that safetensors, safehub's header checks and torch all know cross; a
tensor of any other type (complex128, quantized, float4 and so on) is refused by
name in the child and would be refused again by the parent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ITEMSIZE", "from_name", "name_of"]

_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "F64": "float64", "I64": "int64", "U64": "uint64", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu", "C64": "complex64",
}

# Bytes per element, by safetensors name: what the parent checks a result against
# without importing torch (the CLI writes the bytes as they are).
ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4,
    "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8, "F8_E5M2": 1, "F8_E4M3": 1,
    "F8_E8M0": 1, "C64": 8,
}

_by_name: dict[str, Any] | None = None
_by_dtype: dict[Any, str] | None = None


def _tables() -> tuple[dict[str, Any], dict[Any, str]]:
    global _by_name, _by_dtype
    if _by_name is None or _by_dtype is None:
        import torch

        _by_name = {k: getattr(torch, v) for k, v in _NAMES.items() if hasattr(torch, v)}
        _by_dtype = {v: k for k, v in _by_name.items()}
    return _by_name, _by_dtype


def from_name(name: str) -> Any:
    """The torch dtype for a safetensors dtype name; KeyError when it does not cross."""
    return _tables()[0][name]


def name_of(dtype: Any) -> str:
    """The safetensors name of a torch dtype; KeyError when it does not cross."""
    return _tables()[1][dtype]
