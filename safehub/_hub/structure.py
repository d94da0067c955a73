"""What ``safehub.load`` hands back: one flat state dict plus the returned structure,
and ``into=`` filled from it element by element.

An entrypoint that returns ``(model, utils)`` comes back as the tensors of
``model`` under ``0.`` and a :class:`~safehub.sandbox.ResultShape` saying that
element 1 was a tuple of functions that could not cross. ``into=(my_model, None)``
loads ``0.*`` into ``my_model`` and gives back ``(my_model, None)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from safehub._sandbox.shape import Node

__all__ = ["LoadedState", "fill_into", "subtensors"]

log = logging.getLogger("safehub")


class LoadedState(dict):  # type: ignore[type-arg]
    """``dict[str, torch.Tensor]`` (path-prefixed keys) with the returned structure in
    ``.shape`` (``None`` when unknown) and the dropped leaves in ``.dropped``.

    ``.torchscript`` maps the prefix of each TorchScript module to its archive bytes,
    scanned and allowed, where the policy accepts TorchScript (empty otherwise; see
    :mod:`safehub._hub.torchscript`). safehub never loads them: ``torch.jit.load`` would
    run the archive's code in this process."""

    shape: Node | None
    torchscript: dict[str, bytes]

    def __init__(self, tensors: Mapping[str, Any], shape: Node | None,
                 torchscript: Mapping[str, bytes] | None = None):
        super().__init__(tensors)
        self.shape = shape
        self.torchscript = dict(torchscript or {})

    @property
    def dropped(self) -> list[Node]:
        """The elements that could not leave the sandbox (functions, objects), with why."""
        return self.shape.dropped() if self.shape is not None else []


def _full(node: Node, key: str) -> str:
    return f"{node.prefix}.{key}" if node.prefix else key


def subtensors(node: Node, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The tensors under ``node``, keyed relative to its prefix."""
    out: dict[str, Any] = {}
    base = len(node.prefix) + 1 if node.prefix else 0
    for sub in node.walk():
        if sub.kind == "module":
            for key in sub.keys:
                full = _full(sub, key)
                out[full[base:]] = tensors[full]
        elif sub.kind == "tensor":
            out[sub.prefix[base:]] = tensors[sub.prefix]
    return out


def _content(node: Node, tensors: Mapping[str, Any]) -> Any:
    """An element as plain data: a module as its state dict, containers as containers."""
    if node.kind in ("module",):
        return subtensors(node, tensors)
    if node.kind == "tensor":
        return tensors[node.prefix]
    if node.kind == "value":
        return node.value
    if node.kind == "dropped":
        return None
    if node.kind == "dict":
        return {c.name: _content(c, tensors) for c in node.children}
    items = [_content(c, tensors) for c in node.children]
    return tuple(items) if node.kind == "tuple" else items


def _load_module(module: Any, node: Node, tensors: Mapping[str, Any], subject: str) -> Any:
    if node.kind not in ("module", "dict"):
        raise TypeError(f"into=: {subject} {node.prefix or '(top)'} is a {node.kind}, not "
                        "a module's tensors")
    result = module.load_state_dict(subtensors(node, tensors), strict=False)
    if result.missing_keys or result.unexpected_keys:
        log.warning("%s: loaded %s into %s with missing keys %s and unexpected keys %s",
                    subject, node.prefix or "the result", type(module).__name__,
                    result.missing_keys, result.unexpected_keys)
    return module


def fill_into(into: Any, node: Node, tensors: Mapping[str, Any], subject: str) -> Any:
    """``into`` (a module, or tuples/lists/dicts of modules and None matching the returned
    structure) filled from the result; ``None`` slots get the element as plain data."""
    import torch

    if into is None:
        return _content(node, tensors)
    if isinstance(into, torch.nn.Module):
        return _load_module(into, node, tensors, subject)
    where = node.prefix or "(top)"
    if isinstance(into, (tuple, list)):
        if node.kind not in ("tuple", "list") or len(node.children) != len(into):
            raise TypeError(
                f"into=: {subject} returned {_describe(node)} at {where}, which does not match "
                f"a {type(into).__name__} of {len(into)}")
        filled = [fill_into(i, c, tensors, subject)
                  for i, c in zip(into, node.children, strict=True)]
        return tuple(filled) if isinstance(into, tuple) else filled
    if isinstance(into, Mapping):
        if node.kind != "dict":
            raise TypeError(f"into=: {subject} returned {_describe(node)} at {where}, not a dict")
        children = {c.name or "": c for c in node.children}
        unknown = [k for k in into if k not in children]
        if unknown:
            raise KeyError(f"into=: {subject} returned no entries {unknown} at {where} "
                           f"(it has {sorted(children)})")
        return {k: fill_into(v, children[k], tensors, subject) for k, v in into.items()}
    raise TypeError(f"into= takes a torch.nn.Module, None, or tuples, lists and dicts of those, "
                    f"not {type(into).__name__}")


def _describe(node: Node) -> str:
    if node.kind in ("tuple", "list", "dict"):
        return f"a {node.kind} of {len(node.children)}"
    return f"a {node.kind}"
