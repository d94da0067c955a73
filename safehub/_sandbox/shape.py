"""The structure of what an entrypoint returned, so that only tensors cross.

Entrypoints return more than one module: silero-vad returns ``(model, utils)``
where ``utils`` is a tuple of functions, others return a list of models or a
dict mixing tensors, modules and helpers. The child flattens such a value into
one state dict with path-prefixed keys (element ``0`` of a tuple owns the keys
``0.<name>``, dict entry ``"head"`` owns ``head.<name>``; a module or mapping at
the top keeps its keys as they are) and a manifest: one JSON node per element
that says what it was, which keys it owns, and, for the leaves that cannot
cross (functions, classes, arbitrary objects), that they were dropped and why.

The manifest comes from a process that ran repository code: :func:`parse` checks
it node by node and requires that the nodes claim every tensor key exactly once,
and the prefixes are recomputed here from the node paths, never taken from the
child.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ARCHIVE_KEY", "Node", "ShapeError", "flatten", "parse"]

MAX_NODES = 100_000
MAX_DEPTH = 32
_MAX_TEXT = 200
_MAX_VALUE_TEXT = 4096
_KINDS = frozenset({"module", "tensor", "dict", "tuple", "list", "value", "dropped"})


class ShapeError(ValueError):
    """The value (child) or the manifest (parent) is not a structure that can cross."""


@dataclass(frozen=True)
class Node:
    """One element of the returned structure.

    ``kind`` is ``module`` (its state dict is under ``prefix``; ``script`` when it
    was a TorchScript module), ``tensor`` (the key ``prefix`` itself), ``dict``,
    ``tuple`` or ``list`` (``children`` in order, dict entries named by ``name``),
    ``value`` (a plain JSON value, in ``value``) or ``dropped`` (``reason`` says
    why it could not cross). ``type_name`` is the class the child reported, for
    messages only.
    """

    kind: str
    path: tuple[str, ...] = ()
    name: str | None = None
    type_name: str = ""
    keys: tuple[str, ...] = ()
    value: Any = None
    reason: str = ""
    script: bool = False
    children: tuple[Node, ...] = field(default_factory=tuple)
    # A TorchScript module's serialized archive crossed too (asked for only when the policy
    # accepts TorchScript): the key of its uint8 tensor. The parent scans it before use.
    archive: str = ""

    @property
    def prefix(self) -> str:
        """The key prefix of this element's tensors ('' for the top-level element)."""
        return ".".join(self.path)

    def walk(self) -> Iterator[Node]:
        """This node and every node below it, depth first."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def dropped(self) -> list[Node]:
        """The leaves that did not cross."""
        return [n for n in self.walk() if n.kind == "dropped"]

    def describe(self) -> list[str]:
        """One line per element: where it is, what it was, what became of it."""
        from safehub._sandbox.errors import clean_text

        def one_line(text: str) -> str:  # names and reasons came from the sandbox
            return clean_text(text, 300).replace("\n", "\\n").replace("\t", "\\t")

        lines = []
        for node in self.walk():
            where = one_line(node.prefix) or "(top)"
            if node.kind == "module":
                what = "TorchScript module" if node.script else "module"
                note = f" ({one_line(node.reason)})" if node.reason else ""
                lines.append(f"{where}: {what} {one_line(node.type_name)}, "
                             f"{len(node.keys)} tensors{note}")
            elif node.kind == "tensor":
                lines.append(f"{where}: tensor")
            elif node.kind == "value":
                lines.append(one_line(f"{where}: value {node.value!r}"[:300]))
            elif node.kind == "dropped":
                lines.append(f"{where}: dropped {one_line(node.type_name)} "
                             f"({one_line(node.reason)})")
            else:
                lines.append(f"{where}: {node.kind} of {len(node.children)}")
        return lines


def _type_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"[:_MAX_TEXT]


def _plain(value: object) -> bool:
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= _MAX_VALUE_TEXT


def _dropped_reason(value: object) -> str:
    if isinstance(value, type):
        return "a class: code cannot leave the sandbox"
    if callable(value):
        return "a function or callable object: code cannot leave the sandbox"
    if isinstance(value, str):
        return f"a string longer than {_MAX_VALUE_TEXT} characters"
    if isinstance(value, float):
        return "a float that is not finite"
    return "not a module, tensor or plain value: only those cross"


ARCHIVE_KEY = "#torchscript"  # appended to a module's prefix; '#' is in no attribute name


def flatten(value: Any, *, scripts: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(child side) ``value`` as a flat ``{key: tensor}`` dict and its manifest (JSON).

    ``scripts``: a TorchScript module also sends its ``torch.jit.save`` archive, as one
    uint8 tensor under ``<prefix>#torchscript``.

    Raises ShapeError when the top-level value has nothing that can cross, when the
    structure is too deep or too large, or when two elements claim the same key.
    """
    import torch

    tensors: dict[str, Any] = {}
    owner: dict[str, str] = {}
    count = 0

    def claim(key: str, where: str) -> None:
        if key in owner:
            raise ShapeError(f"the keys of {where or '(top)'} and {owner[key] or '(top)'} "
                             f"collide at {key!r}")
        owner[key] = where

    def walk(obj: Any, path: list[str], depth: int) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise ShapeError(f"the returned structure has more than {MAX_NODES} elements")
        if depth > MAX_DEPTH:
            raise ShapeError(f"the returned structure is nested deeper than {MAX_DEPTH} levels")
        where = ".".join(path)
        if isinstance(obj, torch.nn.Module):
            state = obj.state_dict()
            keys = []
            for key, tensor in state.items():
                if not isinstance(key, str):
                    raise ShapeError(f"{where or '(top)'}: a state_dict key is not a string")
                full = f"{where}.{key}" if where else key
                claim(full, where)
                tensors[full] = tensor
                keys.append(key)
            node = {"k": "module", "type": _type_name(obj), "keys": keys,
                    "script": isinstance(obj, torch.jit.ScriptModule)}
            if scripts and node["script"]:
                import io

                buf = io.BytesIO()
                torch.jit.save(obj, buf)
                key = f"{where}{ARCHIVE_KEY}"
                claim(key, where)
                tensors[key] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
                node["archive"] = True
            return node
        if isinstance(obj, torch.Tensor):
            if not where:  # a bare tensor has no name: torch.hub users index it as one
                raise ShapeError("the entrypoint returned a bare torch.Tensor, which has no "
                                 "name to cross under; return {'name': tensor}")
            claim(where, where)
            tensors[where] = obj
            return {"k": "tensor"}
        if isinstance(obj, Mapping):
            items = []
            for key, item in obj.items():
                if not isinstance(key, str):
                    raise ShapeError(f"{where or '(top)'}: the key {key!r:.80} is not a string")
                items.append([key, walk(item, [*path, key], depth + 1)])
            return {"k": "dict", "items": items}
        if isinstance(obj, (tuple, list)):
            return {"k": "tuple" if isinstance(obj, tuple) else "list",
                    "items": [walk(item, [*path, str(i)], depth + 1)
                              for i, item in enumerate(obj)]}
        if _plain(obj) and path:
            return {"k": "value", "value": obj}
        return {"k": "dropped", "type": _type_name(obj), "reason": _dropped_reason(obj)}

    manifest = walk(value, [], 0)
    if manifest["k"] in ("dropped", "value"):
        raise ShapeError(f"the entrypoint returned a {_type_name(value)}; only an nn.Module, "
                         "a mapping of names to tensors, or tuples, lists and dicts of those "
                         "can leave the sandbox")
    return tensors, manifest


def parse(raw: object, keys: Sequence[str]) -> Node:
    """(parent side) Check the child's manifest against the tensor keys it sent.

    Every tensor key must be claimed by exactly one module or tensor node; prefixes
    come from the node paths. Raises ShapeError on anything malformed.
    """
    from safehub._sandbox.errors import clean_text

    claimed: set[str] = set()
    wanted = set(keys)
    if len(wanted) != len(keys):
        raise ShapeError("the result repeats a key")
    count = 0

    def text(value: object, limit: int = _MAX_TEXT) -> str:
        if not isinstance(value, str):
            raise ShapeError("a manifest text is not a string")
        return clean_text(value, limit)

    def claim(key: str) -> None:
        if key in claimed or key not in wanted:
            raise ShapeError(f"the manifest claims {clean_text(key, 200)!r} "
                             + ("twice" if key in claimed else "which is not in the result"))
        claimed.add(key)

    def node(obj: object, path: tuple[str, ...], name: str | None, depth: int) -> Node:
        nonlocal count
        count += 1
        if count > MAX_NODES or depth > MAX_DEPTH:
            raise ShapeError("the manifest is too large or too deep")
        if not isinstance(obj, dict) or obj.get("k") not in _KINDS:
            raise ShapeError("a manifest node is malformed")
        kind = obj["k"]
        where = ".".join(path)
        if kind == "module":
            rel = obj.get("keys")
            script = obj.get("script", False)
            archive = obj.get("archive", False)
            if not isinstance(rel, list) or not all(isinstance(k, str) for k in rel) or \
                    not isinstance(script, bool) or archive not in (False, True) or \
                    (archive and not script):
                raise ShapeError("a module node is malformed")
            for key in rel:
                claim(f"{where}.{key}" if where else key)
            if archive:
                claim(f"{where}{ARCHIVE_KEY}")
            return Node("module", path, name, text(obj.get("type")), tuple(rel), script=script,
                        archive=f"{where}{ARCHIVE_KEY}" if archive else "")
        if kind == "tensor":
            if not where:
                raise ShapeError("a tensor node at the top")
            claim(where)
            return Node("tensor", path, name)
        if kind == "value":
            value = obj.get("value")
            if not path or not _plain(value):
                raise ShapeError("a value node is not a plain value")
            return Node("value", path, name, value=value)
        if kind == "dropped":
            return Node("dropped", path, name, text(obj.get("type")),
                        reason=text(obj.get("reason"), 300))
        items = obj.get("items")
        if not isinstance(items, list):
            raise ShapeError(f"a {kind} node is malformed")
        children = []
        if kind == "dict":
            seen: set[str] = set()
            for item in items:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)) \
                        or item[0] in seen:
                    raise ShapeError("a dict node is malformed")
                seen.add(item[0])
                children.append(node(item[1], (*path, item[0]), item[0], depth + 1))
        else:
            children = [node(item, (*path, str(i)), None, depth + 1)
                        for i, item in enumerate(items)]
        return Node(kind, path, name, children=tuple(children))

    root = node(raw, (), None, 0)
    if root.kind not in ("module", "dict", "tuple", "list"):
        raise ShapeError("the manifest's top is not a module or a container")
    if claimed != wanted:
        raise ShapeError(f"{len(wanted - claimed)} result keys are not in the manifest")
    return root
