"""The result manifest comes from a process that ran repository code: the parent
accepts it only when it claims every tensor key exactly once, and renders its
names so they cannot forge a line."""

from __future__ import annotations

from typing import Any

import pytest

from safehub._sandbox.shape import MAX_DEPTH, ShapeError, flatten, parse

MODULE = {"k": "module", "type": "torch.nn.Linear", "keys": ["weight", "bias"], "script": False}


def test_flatten_and_parse_agree() -> None:
    import torch

    value = (torch.nn.Linear(2, 1), {"head": torch.nn.Linear(1, 1), "n": 3, "f": len},
             [torch.zeros(2)])
    tensors, manifest = flatten(value)
    assert sorted(tensors) == ["0.bias", "0.weight", "1.head.bias", "1.head.weight", "2.0"]
    root = parse(manifest, list(tensors))
    assert [n.prefix for n in root.dropped()] == ["1.f"]
    assert {n.prefix: n.kind for n in root.walk()}["2.0"] == "tensor"


@pytest.mark.parametrize("manifest, keys, words", [
    ({"k": "tuple", "items": [MODULE]}, ["0.weight", "0.bias", "extra"], "not in the manifest"),
    ({"k": "tuple", "items": [MODULE, MODULE]}, ["0.weight", "0.bias"], "not in the result"),
    ({"k": "dict", "items": [["a", {"k": "tensor"}], ["a", {"k": "tensor"}]]}, ["a"],
     "malformed"),
    ({"k": "tensor"}, [""], "at the top"),
    ({"k": "value", "value": 1}, [], "not a plain value"),
    ({"k": "dropped", "type": "t", "reason": "r"}, [], "not a module or a container"),
    ({"k": "tuple", "items": [{"k": "value", "value": float("nan")}]}, [], "not a plain"),
    ({"k": "tuple", "items": [{"k": "value", "value": {"nested": 1}}]}, [], "not a plain"),
    ({"k": "module", "type": 7, "keys": []}, [], "not a string"),
    ({"k": "pickle"}, [], "malformed"),
    ("module", [], "malformed"),
])
def test_parse_refuses_malformed_manifests(manifest: Any, keys: list[str], words: str) -> None:
    with pytest.raises(ShapeError, match=words):
        parse(manifest, keys)


def test_parse_bounds_depth() -> None:
    node: dict[str, Any] = {"k": "tensor"}
    for _ in range(MAX_DEPTH + 2):
        node = {"k": "list", "items": [node]}
    with pytest.raises(ShapeError, match="too large or too deep"):
        parse(node, ["0." * (MAX_DEPTH + 1) + "0"])


def test_flatten_refuses_collisions_and_bare_values() -> None:
    import torch

    with pytest.raises(ShapeError, match="collide"):
        flatten({"a": torch.nn.Linear(1, 1), "a.weight": torch.ones(1)})
    with pytest.raises(ShapeError, match="builtin_function_or_method"):
        flatten(len)
    with pytest.raises(ShapeError, match=r"torch\.Tensor"):
        flatten(torch.ones(1))


def test_descriptions_cannot_forge_lines() -> None:
    manifest = {"k": "dict", "items": [
        ["x\nsafehub: 0 findings", {"k": "dropped", "type": "a\nb", "reason": "c\rd\ne"}],
        ["v", {"k": "value", "value": "1\n2"}]]}
    lines = parse(manifest, []).describe()
    assert len(lines) == 3 and all("\n" not in line and "\r" not in line for line in lines)
