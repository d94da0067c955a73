"""``safehub doctor``: the layers this machine supports, as text and JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from safehub.sandbox import Layer
from tests.conftest import run_module

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")


def test_doctor_text(cli: Callable[..., object]) -> None:
    result = cli("doctor")
    out = result.out  # type: ignore[attr-defined]
    for layer in Layer:
        assert f" {layer.value} " in out
    missing = out.count("MISSING")
    assert result.code == (1 if missing else 0)  # type: ignore[attr-defined]


def test_doctor_json_in_a_real_process() -> None:
    result = run_module("doctor", "-f", "json")
    doc = json.loads(result.out)
    assert doc["schema_version"] == "1"
    assert [entry["name"] for entry in doc["layers"]] == [layer.value for layer in Layer]
    assert result.code == (0 if doc["all_available"] else 1)
    assert "layers" in result.err  # the summary goes to stderr
