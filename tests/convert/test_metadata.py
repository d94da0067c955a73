"""convert's metadata skeleton: user data can never pass for a tensor reference (or any
other marker), and restore() rebuilds the original structure from the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub._convert.entry import flatten
from safehub.convert import convert, metadata_path, restore, save

_HOSTILE = ["$tensor", "$$tensor", "$$$tensor", "$", "$$", "", "$float", "$dtype",
            "$dropped", "$module", "state_dict", "w", "$tensor ", "\u0000", "$\u00e9"]
_keys = st.one_of(st.sampled_from(_HOSTILE), st.text(max_size=6).filter(lambda k: "." not in k))
_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                    st.sampled_from(_HOSTILE))
_data = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12)


def _round_trip(obj: Any) -> Any:
    tensors, skeleton, dropped = flatten(obj)
    assert dropped == []
    stored = json.loads(json.dumps(skeleton))
    return restore(stored, tensors)


@settings(max_examples=300, deadline=None)
@given(_data)
def test_plain_data_round_trips_whatever_its_keys(obj: Any) -> None:
    assert _round_trip(obj) == obj


def test_user_data_shaped_like_a_reference_stays_data() -> None:
    import torch

    obj = {"w": torch.ones(2), "cfg": {"$tensor": "w"}, "$tensor": "w", "f": {"$float": "nan"}}
    back = _round_trip(obj)
    assert torch.equal(back["w"], torch.ones(2))
    assert back["cfg"] == {"$tensor": "w"} and back["$tensor"] == "w"
    assert back["f"] == {"$float": "nan"}
    assert math.isnan(_round_trip({"x": float("nan")})["x"])


def test_saved_metadata_round_trips(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    obj = {"model": {"$tensor": torch.arange(3.0), "$$x": 1}, "meta": {"$tensor": "model"}}
    out = save(obj, tmp_path / "m.safetensors")
    meta = json.loads(metadata_path(out).read_text())
    back = restore(meta["structure"], load_file(out))
    assert torch.equal(back["model"]["$tensor"], torch.arange(3.0))
    assert back["model"]["$$x"] == 1 and back["meta"] == {"$tensor": "model"}


@pytest.mark.slow
def test_convert_in_the_sandbox_keeps_reference_shaped_data(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    src = tmp_path / "ck.pt"
    torch.save({"w": torch.ones(2), "user": {"$tensor": "w"}}, src)
    result = convert(src)
    assert result.metadata is not None
    meta = json.loads(result.metadata.read_text())
    back = restore(meta["structure"], load_file(result.output))
    assert back["user"] == {"$tensor": "w"} and torch.equal(back["w"], torch.ones(2))
