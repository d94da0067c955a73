"""The default-deny allowlist: the globals that rebuilding tensors and plain containers needs.

It is the union of what torch's weights-only unpickler accepts and what numpy's
array reconstruction uses, and nothing else. Each entry says why it is safe with
any arguments a hostile file could pass. Names are matched exactly, after the
protocol-2 renames (``__builtin__.set`` -> ``builtins.set``) the loader applies.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEFAULT_ALLOWED", "SPARSE_CONSTRUCTORS", "TORCHSCRIPT_ALLOWED", "allowed_reason",
           "matches", "unchecked_sparse"]

_TORCH_STORAGE_TYPES = (
    "BFloat16", "Bool", "Byte", "Char", "ComplexDouble", "ComplexFloat", "Double", "Float",
    "Half", "Int", "Long", "QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8", "Short",
)
_TORCH_TENSOR_TYPES = (
    "BFloat16", "Bool", "Byte", "Char", "Double", "Float", "Half", "Int", "Long", "Short",
)
_TORCH_DTYPES = (
    "bfloat16", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8", "bool", "complex128",
    "complex32", "complex64", "float16", "float32", "float4_e2m1fn_x2", "float64",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "qint32", "qint8", "quint2x4", "quint4x2", "quint8",
    *(f"int{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)),
    *(f"uint{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)),
    # Aliases torch.save has written in older releases.
    "float", "double", "half", "int", "long", "short", "cfloat", "cdouble", "chalf",
)
_TORCH_QSCHEMES = (
    "per_channel_affine", "per_channel_affine_float_qparams", "per_channel_symmetric",
    "per_tensor_affine", "per_tensor_symmetric",
)
_TORCH_REBUILD = (
    "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_device_tensor_from_numpy",
    "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_wrapper_subclass",
)


def _build() -> dict[str, str]:
    allowed: dict[str, str] = {
        "collections.OrderedDict": "ordered dict container; state dicts are OrderedDicts",
        "collections.Counter": "dict subclass counting keys; builds a plain mapping",
        "builtins.set": "set container",
        "builtins.frozenset": "immutable set container",
        "builtins.bytearray": "mutable bytes value",
        # Protocols 0-2 write an empty bytes value as bytes(): torch.save's default protocol
        # is 2, so state dicts holding b"" carry it.
        "builtins.bytes": "bytes value (how protocols 0-2 pickle b'')",
        "builtins.complex": "complex number value",
        "_codecs.encode": "how protocol 2 pickles bytes (str -> bytes with a text codec)",
        "torch.Size": "tuple subclass for tensor shapes",
        "torch.Tensor": "the tensor class; rebuilt by torch's own rebuild functions",
        "torch.device": "device descriptor value (cpu, cuda:0)",
        "torch.nn.parameter.Parameter": "tensor wrapper marking trainable weights",
        "torch.serialization._get_layout": "maps a layout name to a torch.layout constant",
        "torch._tensor._rebuild_from_type_v2": "rebuilds tensor subclasses; calls only "
        "allowlisted rebuild functions it receives",
        "torch.storage.TypedStorage": "typed tensor storage",
        "torch.storage.UntypedStorage": "raw tensor storage",
        # numpy's array reconstruction (ndarray.__reduce__), both module spellings.
        "numpy.ndarray": "numpy array class",
        "numpy.dtype": "numpy dtype descriptor",
        "numpy.core.multiarray._reconstruct": "numpy array reconstruction (numpy < 2)",
        "numpy._core.multiarray._reconstruct": "numpy array reconstruction (numpy >= 2)",
        "numpy.core.multiarray.scalar": "numpy scalar from raw bytes (numpy < 2)",
        "numpy._core.multiarray.scalar": "numpy scalar from raw bytes (numpy >= 2)",
        "numpy.core.numeric._frombuffer": "array from an in-band buffer (protocol 5, numpy < 2)",
        "numpy._core.numeric._frombuffer": "array from an in-band buffer (protocol 5, numpy >= 2)",
    }
    for t in _TORCH_STORAGE_TYPES:
        allowed[f"torch.{t}Storage"] = "legacy typed storage class (names the dtype)"
        allowed[f"torch.cuda.{t}Storage"] = "legacy CUDA typed storage class (names the dtype)"
    for t in _TORCH_TENSOR_TYPES:
        for prefix in ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse"):
            allowed[f"{prefix}.{t}Tensor"] = "legacy typed tensor class"
    for d in _TORCH_DTYPES:
        allowed[f"torch.{d}"] = "dtype constant"
    for q in _TORCH_QSCHEMES:
        allowed[f"torch.{q}"] = "quantization scheme constant"
    for f in _TORCH_REBUILD:
        allowed[f"torch._utils.{f}"] = "torch's tensor rebuild function"
    return allowed


DEFAULT_ALLOWED: dict[str, str] = _build()

# What the TorchScript unpickler resolves besides its own ``__torch__`` classes. Used only for
# records inside TorchScript archives, which are reported as executable content anyway.
TORCHSCRIPT_ALLOWED: dict[str, str] = {
    "torch.jit._pickle.build_intlist": "TorchScript list constructor",
    "torch.jit._pickle.build_tensorlist": "TorchScript list constructor",
    "torch.jit._pickle.build_doublelist": "TorchScript list constructor",
    "torch.jit._pickle.build_boollist": "TorchScript list constructor",
    "torch.jit._pickle.build_tensor_from_id": "TorchScript tensor table lookup",
    "torch.jit._pickle.restore_type_tag": "TorchScript container type tag",
}


def allowed_reason(name: str, extra: Iterable[str] = ()) -> str | None:
    """Why ``name`` is allowed, or None when it is not."""
    reason = DEFAULT_ALLOWED.get(name)
    if reason is not None:
        return reason
    for pattern in extra:
        if matches(pattern, name):
            return f"allowed by configuration ({pattern})"
    return None


def matches(pattern: str, name: str) -> bool:
    """Whether an allowlist pattern covers a global.

    ``pkg.mod.Name`` matches exactly; ``pkg.mod.*`` matches the names defined
    directly in ``pkg.mod`` (one more dotted component, never deeper), so a
    wildcard cannot reach into submodules or attributes of attributes.
    """
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        return name.startswith(prefix) and "." not in name[len(prefix):] and len(name) > len(prefix)
    return pattern == name


# The modules of the legacy sparse constructors (torch.sparse.FloatTensor, ...).
SPARSE_CONSTRUCTORS = ("torch.sparse.", "torch.cuda.sparse.")


def unchecked_sparse(name: str) -> bool:
    """Whether an allowed name builds a sparse tensor from the file's indices unchecked:
    torch's sparse rebuild function and the legacy sparse constructors. torch checks the
    indices only under ``torch.sparse.check_sparse_tensor_invariants`` (off by default), and
    bad ones make the tensor's first use read and write outside its data (SH108)."""
    return name == "torch._utils._rebuild_sparse_tensor" or (
        name.startswith(SPARSE_CONSTRUCTORS) and name in DEFAULT_ALLOWED)
