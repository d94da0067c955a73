"""The trusted entrypoint that loads a checkpoint inside the sandbox (its ``hubconf.py``).

This file is copied, as is, into a private folder as ``hubconf.py`` and run by the
sandbox: it must import nothing but the standard library and torch. The checkpoint
reaches it as a descriptor the parent opened (the sandbox's download broker serves
exactly one URL, the checkpoint), and is loaded with ``torch.load(weights_only=True)``
plus the globals the policy allows; only with ``full_unpickle`` is it unpickled in
full, which runs whatever the pickle says, still inside the sandbox.

The loaded object is flattened into ``{name: tensor}``: a mapping of tensors keeps its
names; nested containers get dotted names (``model.layer.weight``, list items by
index). Everything else that is plain data (numbers, strings, booleans, None, lists,
string-keyed dicts, ``torch.Size``, dtypes) is kept in a JSON skeleton of the original
structure, where each tensor is ``{"$tensor": name}``; anything else is dropped and
listed. Markers are dicts with a key that starts with one ``$`` (``$tensor``,
``$float``, ``$dtype``, ``$module``, ``$dropped``); every key of the checkpoint's own
dicts that starts with ``$`` gets one more ``$`` (``"$tensor"`` -> ``"$$tensor"``), so
user data can never look like a marker (:func:`escape_key`). The skeleton travels as
the bytes of a uint8 tensor under :data:`META_KEY`, because only tensors leave the
sandbox.
"""

from __future__ import annotations

import collections
import importlib
import json
import math
import os
import tempfile
from typing import Any

META_KEY = "__safehub_convert_metadata__"


def escape_key(key: str) -> str:
    """A checkpoint's dict key as stored in the skeleton: ``$`` keys get one more ``$``."""
    return "$" + key if key.startswith("$") else key


def _resolve(names: list[str]) -> list[Any]:
    """The objects for allowed global names (``module.attr``), for torch's safe_globals."""
    found: list[Any] = []
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            found.append((obj, name))
            break
    return found


# What a defaultdict's factory may be for torch to fill it: the scanner's value types
# (safehub._scanner.harmless.DEFAULTDICT_FACTORIES; this child imports only the standard
# library and torch, and a test keeps the two equal).
VALUE_FACTORIES = (int, float, str, list, dict, tuple, bool, set, frozenset, bytes, complex,
                   collections.OrderedDict, collections.Counter, collections.defaultdict)


def _allow_filled_defaultdicts() -> None:
    """As safehub._hub.safe_globals.allow_filled_defaultdicts: torch's weights-only loader
    fills a defaultdict the scan passed (value-type factory) instead of refusing it."""
    from torch import _weights_only_unpickler as wou

    unpickler = getattr(wou, "Unpickler", None)
    original = getattr(unpickler, "_check_set_item_target", None)
    if unpickler is None or not callable(original):
        return  # fail closed: torch keeps refusing

    def check_set_item_target(self: Any, opcode: str) -> None:
        target = self.stack[-1] if self.stack else None
        if type(target) is collections.defaultdict and (
                target.default_factory is None
                or any(target.default_factory is f for f in VALUE_FACTORIES)):
            return
        original(self, opcode)

    unpickler._check_set_item_target = check_set_item_target


class _Flattener:
    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.tensors: dict[str, Any] = {}
        self.dropped: list[str] = []

    def tensor_name(self, key: str) -> str:
        name = key or "tensor"
        if name in self.tensors or name == META_KEY:
            raise ValueError(f"two tensors would both be named {name!r} after flattening")
        return name

    def walk(self, value: Any, key: str, depth: int = 0) -> Any:
        torch = self.torch
        if depth > 64:
            self.dropped.append(f"{key or '<root>'} (nested deeper than 64 levels)")
            return {"$dropped": "too deep"}
        if isinstance(value, torch.Tensor):
            name = self.tensor_name(key)
            self.tensors[name] = value.detach()
            return {"$tensor": name}
        if isinstance(value, torch.nn.Module):
            return {"$module": f"{type(value).__module__}.{type(value).__qualname__}",
                    "state_dict": self.walk(value.state_dict(), key, depth + 1)}
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, torch.Size):
            return [int(v) for v in value]
        if isinstance(value, torch.dtype):
            return {"$dtype": str(value)}
        if isinstance(value, (list, tuple)):
            return [self.walk(v, f"{key}.{i}" if key else str(i), depth + 1)
                    for i, v in enumerate(value)]
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    self.dropped.append(f"{key}[{k!r}] (key of type {type(k).__name__})")
                    continue
                sk = str(k)  # JSON keys are strings; integer keys (optimizer state) too
                out[escape_key(sk)] = self.walk(v, f"{key}.{sk}" if key else sk, depth + 1)
            return out
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        self.dropped.append(f"{key or '<root>'} ({kind})")
        return {"$dropped": kind}


def flatten(obj: Any) -> tuple[dict[str, Any], Any, list[str]]:
    """``(tensors, skeleton, dropped)`` for a loaded checkpoint (see the module docs)."""
    flattener = _Flattener()
    skeleton = flattener.walk(obj, "")
    return flattener.tensors, skeleton, flattener.dropped


def convert_checkpoint(url: str, allowed: list[str] | None = None,
                       full_unpickle: bool = False) -> dict[str, Any]:
    """Load the checkpoint the broker serves at ``url``; return its tensors and skeleton."""
    import torch
    import torch.hub

    if full_unpickle:
        # The broker's descriptor is copied into the sandbox's private temp folder (the
        # working folder there), then unpickled in full: its code runs here, and only
        # tensors leave.
        with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:
            local = os.path.join(tmp, "checkpoint")
            torch.hub.download_url_to_file(url, local)
            obj = torch.load(local, map_location="cpu", weights_only=False)
    else:
        if "collections.defaultdict" in (allowed or []):
            _allow_filled_defaultdicts()
        with torch.serialization.safe_globals(_resolve(list(allowed or []))):
            obj = torch.hub.load_state_dict_from_url(url, map_location="cpu")
    tensors, skeleton, dropped = flatten(obj)
    del obj
    meta = json.dumps({"structure": skeleton, "dropped": dropped}, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")
    tensors[META_KEY] = torch.frombuffer(bytearray(meta), dtype=torch.uint8)
    return tensors
