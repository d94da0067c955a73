"""What ``--fix`` leaves beside each converted file, and how the next audit checks it.

A converted file ``<name>`` gets ``<name>.safehub-fix.json`` beside it: the converted
file's SHA-256 and size, the original's path and SHA-256, where the original was
quarantined and the manifest that lists it. The next audit checks the converted bytes
against that record (SH400 when they changed since the fix).

Converted names never carry torch's ``-<hex>.`` download-name pattern (torch.hub's
``HASH_REGEX`` takes any ``-<hex>.`` as a SHA-256 prefix): ``resnet18-8a5076f0.pth``
becomes ``resnet18_8a5076f0.safetensors``, so neither torch nor the next audit reads the
original's prefix as the new file's digest.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safehub._audit.model import Expectation

__all__ = ["RECORD_SUFFIX", "TOOL", "converted_name", "read_fix_record", "record_expectation",
           "record_path"]

RECORD_SUFFIX = ".safehub-fix.json"
TOOL = "safehub audit --fix"
_TORCH_HASH_DASH = re.compile(r"-(?=[a-f0-9]*\.)")


def converted_name(original: Path, suffix: str) -> Path:
    """Where the conversion of ``original`` goes: beside it, with ``suffix``, and without
    any ``-<hex>.`` that torch would read as a digest prefix."""
    stem = _TORCH_HASH_DASH.sub("_", original.stem + ".")[:-1]
    return original.with_name(stem + suffix)


def record_path(converted: str | os.PathLike[str]) -> Path:
    """The record that goes with a converted file."""
    path = Path(converted)
    return path.with_name(path.name + RECORD_SUFFIX)


def read_fix_record(converted: str) -> dict[str, Any] | None:
    """The record beside ``converted`` if there is one (a malformed record is returned as
    ``{}``, which matches no bytes)."""
    path = record_path(converted)
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.loads(fh.read(1 << 20))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        return {}
    return data


def record_expectation(converted: str) -> Expectation | None:
    """The digest the fix record beside ``converted`` says it has, or None."""
    data = read_fix_record(converted)
    if data is None:
        return None
    digest = data.get("converted_sha256")
    size = data.get("converted_size")
    name = data.get("converted")
    valid = (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None
             and isinstance(size, int) and name == os.path.basename(converted))
    source = f"safehub's fix record {record_path(converted)}"
    if not valid:
        # A record that names another file, or none: nothing can match it.
        return Expectation("sha256", "0" * 64, source + " (unreadable or for another file)",
                           "SH400", size=-1)
    return Expectation("sha256", str(digest), source, "SH400", size=int(size))  # type: ignore[arg-type]
