"""Converting checkpoints: the implementation behind :mod:`safehub.convert`.

The public module documents the behaviour; this one holds it so that the audit's
``--fix`` (a private package) converts without importing the facade.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safehub._convert.entry import escape_key, flatten
from safehub._convert.writers import (
    OutputFormat,
    file_sha256,
    prepare,
    write_json,
    write_tensors,
)
from safehub._namedfile import check_replaceable
from safehub._policy.policy import Policy, load_policy
from safehub.errors import SafehubError, UnsafeModel

__all__ = ["METADATA_SCHEMA", "TORCH_FORMATS", "Conversion", "OutputFormat", "convert",
           "default_output", "metadata_path", "restore", "save", "tensor_ref"]

log = logging.getLogger("safehub.convert")

PathArg = str | os.PathLike[str]
METADATA_SCHEMA = "2"  # 2: user keys starting with "$" are escaped
# Scanner formats torch.load reads (and so can be converted in the sandbox).
TORCH_FORMATS = ("torch-zip", "torch-legacy", "torch-tar")


@dataclass(frozen=True)
class Conversion:
    """What a conversion wrote.

    ``metadata`` is the JSON file with the checkpoint's plain data (None when the
    checkpoint was only tensors); ``upcast`` the keys stored as float32 instead of
    bfloat16; ``dropped`` what was neither tensor nor plain data; ``aliased`` groups of
    keys whose tensors shared storage (each now has its own copy).
    """

    source: Path
    output: Path
    format: OutputFormat
    tensors: int
    source_sha256: str
    output_sha256: str
    metadata: Path | None = None
    upcast: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    aliased: tuple[tuple[str, ...], ...] = ()


def default_output(source: PathArg, fmt: OutputFormat | str = OutputFormat.SAFETENSORS) -> Path:
    """``model.pth`` -> ``model.safetensors`` (or ``model.npz``), beside the source."""
    src = Path(source)
    return src.with_name(src.stem + OutputFormat(fmt).suffix)


def metadata_path(output: PathArg) -> Path:
    """Where the plain data of a conversion to ``output`` goes:
    ``model.safetensors`` -> ``model.safetensors.metadata.json``."""
    out = Path(output)
    return out.with_name(out.name + ".metadata.json")


def tensor_ref(name: str) -> dict[str, str]:
    """The skeleton's marker for the tensor stored under ``name``."""
    return {"$tensor": name}


def _is_plain_mapping(structure: Any) -> bool:
    return isinstance(structure, dict) and all(
        isinstance(v, dict) and v == tensor_ref(_unescape(k)) for k, v in structure.items())


def _unescape(key: str) -> str:
    return key[1:] if key.startswith("$$") else key


def restore(structure: Any, tensors: Mapping[str, Any]) -> Any:
    """Rebuild a checkpoint's structure from its ``.metadata.json`` ``structure`` and the
    tensors read from the output file. Dropped values come back as None; ``$float``
    values as floats, ``$dtype`` as ``torch.dtype``; ``$module`` as its state dict.

    Raises :class:`~safehub.errors.SafehubError` for a marker it does not know or a
    tensor reference that is not in ``tensors``.
    """
    if isinstance(structure, list):
        return [restore(v, tensors) for v in structure]
    if not isinstance(structure, dict):
        return structure
    markers = [k for k in structure if k.startswith("$") and not k.startswith("$$")]
    if not markers:
        return {_unescape(k): restore(v, tensors) for k, v in structure.items()}
    marker = markers[0]
    value = structure[marker]
    if marker == "$tensor" and len(structure) == 1:
        if not isinstance(value, str) or value not in tensors:
            raise SafehubError(f"the metadata refers to a tensor that is not there: {value!r}",
                               fix="use the metadata file written with this tensors file")
        return tensors[value]
    if marker == "$float" and len(structure) == 1 and value in ("nan", "inf", "-inf"):
        return float(value)
    if marker == "$dtype" and len(structure) == 1 and isinstance(value, str):
        import torch

        found = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(found, torch.dtype):
            return found
    if marker == "$dropped" and len(structure) == 1:
        return None
    if marker == "$module" and set(structure) == {"$module", "state_dict"}:
        return restore(structure["state_dict"], tensors)
    raise SafehubError(f"unknown marker in the metadata: {marker!r}",
                       fix="use the metadata file written with this tensors file")


def _check_output(source: Path | None, output: Path, overwrite: bool) -> None:
    if source is not None and os.path.abspath(output) == os.path.abspath(source):
        raise SafehubError("the output would replace the source", subject=str(output),
                           fix="name another output file")
    if not output.parent.is_dir():
        raise SafehubError("the output folder does not exist", subject=str(output.parent),
                           fix="create it first")
    for path in (output, metadata_path(output)):  # a device or FIFO is never replaced
        check_replaceable(path, what="output")
    if not overwrite:
        for path in (output, metadata_path(output)):
            if os.path.lexists(path):
                raise SafehubError("the output exists already", subject=str(path),
                                   fix="remove it, choose another name, or pass "
                                       "overwrite=True",
                                   cli_fix="remove it, choose another name, or pass --force")


def _write(tensors: Mapping[str, Any], structure: Any, dropped: list[str], output: Path,
           fmt: OutputFormat, *, upcast_bfloat16: bool, source: Path | None,
           source_sha256: str | None, aliased: tuple[tuple[str, ...], ...] = ()
           ) -> tuple[Path | None, list[str]]:
    ready, upcast = prepare(tensors, fmt, upcast_bfloat16=upcast_bfloat16, subject=str(output))
    metadata: Path | None = None
    if not _is_plain_mapping(structure) or dropped:
        metadata = metadata_path(output)
        write_json(metadata, {
            "schema_version": METADATA_SCHEMA, "tool": "safehub convert",
            "tensors_file": output.name,
            "source": str(source) if source is not None else None,
            "source_sha256": source_sha256, "structure": structure, "dropped": dropped,
            "upcast_from_bfloat16": upcast, "aliased": [list(g) for g in aliased]})
    write_tensors(ready, output, fmt)
    return metadata, upcast


def save(state_dict: Mapping[str, Any] | Any, path: PathArg, *,
         format: OutputFormat | str | None = None, upcast_bfloat16: bool = False,
         overwrite: bool = True) -> Path:
    """Save tensors (a state dict returned by ``safehub.load``, or any checkpoint-like
    object already in memory) as safetensors or ``.npz``, with the same rules as
    :func:`convert`. ``format`` defaults to the path's suffix. Returns the path written.

    Raises :class:`~safehub.errors.SafehubError` for dtypes the format cannot hold.
    """
    output = Path(path)
    fmt = OutputFormat(format) if format is not None else _format_of(output)
    _check_output(None, output, overwrite)
    tensors, structure, dropped = flatten(state_dict)
    _write(tensors, structure, dropped, output, fmt, upcast_bfloat16=upcast_bfloat16,
           source=None, source_sha256=None)
    return output


def _format_of(path: Path) -> OutputFormat:
    for fmt in OutputFormat:
        if path.suffix.lower() == fmt.suffix:
            return fmt
    raise SafehubError(f"cannot tell the format from the name {path.name!r}", subject=str(path),
                       fix="name the file *.safetensors or *.npz, or pass format=")


def convert(source: PathArg, output: PathArg | None = None, *,
            format: OutputFormat | str = OutputFormat.SAFETENSORS,
            upcast_bfloat16: bool = False, policy: Policy | PathArg | None = None,
            overwrite: bool = False, unsafe_full_unpickle: bool = False,
            sandbox: Any | None = None) -> Conversion:
    """Convert the checkpoint ``source`` to ``output`` (default :func:`default_output`).

    ``policy`` supplies the scanner options (allowed globals) and the sandbox's limits and
    required layers. ``sandbox``: a :class:`safehub.sandbox.Sandbox` to run in (default:
    the process-wide one). Raises :class:`~safehub.errors.UnsafeModel` for a file with
    blocking findings (unless ``unsafe_full_unpickle``),
    :class:`~safehub.errors.SandboxError` when the sandbox cannot load it, and
    :class:`~safehub.errors.SafehubError` for unsupported input or output.
    """
    from safehub._scanner.engine import scan_fileobj
    from safehub._torchdep import require_torch

    require_torch("safehub.convert")
    fmt = OutputFormat(format)
    src = Path(source)
    out = Path(output) if output is not None else default_output(src, fmt)
    chosen = load_policy(policy)
    _check_output(src, out, overwrite)
    from safehub._snapshot import Snapshot

    # One private, sealed copy: hashed, scanned and handed to the sandbox as a descriptor.
    with Snapshot.of_path(src) as snap:
        with snap.open() as fh:
            report = scan_fileobj(fh, str(src), snap.size, chosen.scan_options())
        source_sha256 = snap.sha256
        if report.verdict.value == "unsafe" and not unsafe_full_unpickle:
            raise UnsafeModel(f"refusing to convert {src}: scanning found what loading it "
                              "would do", subject=str(src), report=report,
                              fix="do not convert it; if you must rescue its tensors, "
                              "unsafe_full_unpickle (--unsafe-full-unpickle) unpickles it in "
                              "full inside the sandbox")
        dropped: list[str] = []
        aliased: tuple[tuple[str, ...], ...] = ()
        if report.format == "safetensors":
            if fmt is OutputFormat.SAFETENSORS:
                raise SafehubError("the file is safetensors already", subject=str(src),
                                   fix="pass --format npz to write numpy's format")
            tensors = _read_safetensors(snap, src)
            structure: Any = {escape_key(k): tensor_ref(k) for k in tensors}
        elif report.format in TORCH_FORMATS:
            if unsafe_full_unpickle:
                log.warning("UNSAFE: %s is unpickled in full inside the sandbox; the code it "
                            "carries runs there, and the tensors are whatever it produced", src)
            from safehub._convert.sandboxed import load_in_sandbox
            from safehub._hub.safe_globals import allowed_global_names

            allowed = allowed_global_names(report)
            loaded = load_in_sandbox(snap, src.name, policy=chosen, allowed_globals=allowed,
                                     full_unpickle=unsafe_full_unpickle, sandbox=sandbox)
            tensors, structure = loaded.tensors, loaded.structure
            dropped, aliased = loaded.dropped, loaded.aliased
        else:
            raise SafehubError(f"not a torch checkpoint (the content is {report.format})",
                               subject=str(src),
                               fix="convert files written by torch.save, or safetensors to npz")
    metadata, upcast = _write(tensors, structure, dropped, out, fmt,
                              upcast_bfloat16=upcast_bfloat16, source=src,
                              source_sha256=source_sha256, aliased=aliased)
    for item in dropped:
        log.warning("%s: not tensor or plain data, not kept: %s", src, item)
    return Conversion(source=src, output=out, format=fmt, tensors=len(tensors),
                      source_sha256=source_sha256, output_sha256=file_sha256(out),
                      metadata=metadata, upcast=tuple(upcast), dropped=tuple(dropped),
                      aliased=aliased)


def _read_safetensors(snap: Any, src: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        if snap.path is not None:
            return dict(load_file(snap.path))
        with snap.open() as fh:
            return dict(load(fh.read()))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SafehubError(f"cannot read the safetensors file: {exc}", subject=str(src),
                           fix="re-save it with the safetensors library") from exc


# Public as safehub.convert.Conversion: pickles and help() name the public path.
Conversion.__module__ = "safehub.convert"
