"""Convert pickle-based checkpoints to safetensors (or numpy ``.npz``), so the pickle can go.

>>> from safehub.convert import convert, save
>>> result = convert("resnet18-f37072fd.pth")              # -> resnet18-f37072fd.safetensors
>>> result = convert("model.pth", "model.npz", format="npz", upcast_bfloat16=True)
>>> save(safehub.load("pytorch/vision", "resnet18"), "resnet18.safetensors")

``convert`` never unpickles in this process. The file is opened once, hashed and
scanned; a file with blocking findings is refused (:class:`~safehub.errors.UnsafeModel`)
unless ``unsafe_full_unpickle`` is set. It is then loaded in the sandbox
(:mod:`safehub.sandbox`) with ``torch.load(weights_only=True)`` and the globals the
policy allows; with ``unsafe_full_unpickle`` it is unpickled in full there, running
whatever code it carries inside the sandbox (use it to rescue the weights of a file
whose pickle needs arbitrary classes; the tensors are whatever that code produced).
Only tensors and plain data come back. A safetensors file is read directly (it holds
no code) and can be written as ``.npz``.

Output: tensor names are kept (nested checkpoints get dotted names, list items their
index); the rest of the checkpoint, where it is plain data (numbers, strings, lists,
string-keyed dicts), is written beside the output as ``<output>.metadata.json``: the
original structure with each tensor as ``{"$tensor": name}``; anything else is dropped
and listed there. The checkpoint's own dict keys that start with ``$`` are stored with
one more ``$`` (``"$tensor"`` -> ``"$$tensor"``), so data can never pass for a marker;
:func:`restore` rebuilds the structure from the JSON and the tensors. Nothing is written
when the checkpoint is a plain mapping of tensors.

Formats: ``safetensors`` keeps every dtype (bfloat16 and float8 too; MLX reads
bfloat16 natively and float8 as uint8). ``npz`` is what numpy and MLX
(``mlx.core.load``) read directly; numpy has no bfloat16, so bfloat16 tensors are
refused unless ``upcast_bfloat16`` asks for float32 (exact, twice the size); float8
tensors are always refused for npz. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

from safehub._convert.convert import METADATA_SCHEMA as METADATA_SCHEMA
from safehub._convert.convert import TORCH_FORMATS as TORCH_FORMATS
from safehub._convert.convert import (
    Conversion,
    convert,
    default_output,
    metadata_path,
    restore,
    save,
)
from safehub._convert.convert import tensor_ref as tensor_ref
from safehub._convert.writers import OutputFormat

__all__ = ["Conversion", "OutputFormat", "convert", "default_output", "metadata_path", "restore",
           "save"]
