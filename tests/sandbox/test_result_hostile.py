"""Hostile safetensors headers from the sandbox are refused by name (SH503), never a crash.

Each header here passes the byte-range checks (a shape holding a 0 describes no bytes), so
only the parent's overflow and name checks stand between it and a torch exception (or an
encoder error when the result is saved).
"""

from __future__ import annotations

import pytest

from safehub._sandbox.result import read_tensors
from safehub.sandbox import BadResult
from tests.sandbox.test_boundary import memfd, safetensors_bytes

torch = pytest.importorskip("torch")


def _header(name: str, shape: list[int], dtype: str = "F32") -> bytes:
    return safetensors_bytes({name: {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]}})


@pytest.mark.parametrize("shape", [[2**70, 0], [2**40, 2**40, 0], [0, 2**63], [2**62, 4, 0],
                                   [1] * 65 + [0]])
def test_overflowing_shapes_are_sh503_naming_the_key(shape: list[int]) -> None:
    with pytest.raises(BadResult) as info:
        read_tensors(memfd(_header("huge", shape)))
    assert info.value.rule_id == "SH503"
    assert info.value.keys == ["huge"]
    assert "huge" in info.value.diagnostics()


def test_a_shape_torch_can_hold_still_loads() -> None:
    out = read_tensors(memfd(_header("empty", [2**40, 0])))
    assert out["empty"].shape == (2**40, 0)


def test_torch_itself_refuses_the_overflowing_shapes() -> None:
    # The oracle: without the parent's check these reach torch and raise there.
    with pytest.raises((RuntimeError, TypeError)):
        torch.empty([2**40, 2**40, 0])
    with pytest.raises((RuntimeError, TypeError, OverflowError)):
        torch.empty([2**70, 0])


def test_a_lone_surrogate_name_is_sh503_and_printable() -> None:
    raw = (b'{"a\\udc80\\n": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}')
    with pytest.raises(BadResult) as info:
        read_tensors(memfd(safetensors_bytes(raw)))
    assert info.value.rule_id == "SH503"
    text = info.value.diagnostics()
    text.encode("utf-8")  # representable everywhere it is shown
    assert "a\\xdc80" in text or "a\\x80" in text
    assert "\n" not in info.value.keys[0]
    assert all(not line or line[0] != "a" for line in text.splitlines()[1:])
