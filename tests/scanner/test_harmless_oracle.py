"""Harmless files the real loaders accept scan CLEAN (tests/scanner/oracle/harmless_gen.py).

Every dtype (bfloat16, float8, uint16-64, complex, quantized per tensor and per channel),
views, shared storages, empty and 0-d tensors, devices, dtypes, containers, RNG states,
state dicts of many layer kinds (quantized, parametrized), optimizer, scheduler and
GradScaler states, written by ``torch.save`` (zip and legacy), ``numpy.save``/``savez``,
``joblib.dump`` and ``pickle.dump``. The oracle is the real loader in its safe mode with no
extra allowances (``torch.load(weights_only=True)``, ``numpy.load(allow_pickle=False)``,
torch's weights-only unpickler, joblib limited to numpy's array globals): what it loads
must not be a finding that blocks. A TorchScript archive is executable content: blocked by
default, allowed once the policy accepts TorchScript.

The quick subset (one file per shape) runs here; ``SAFEHUB_HARMLESS_FULL=1`` crosses every
shape with pickle protocols 0-5 and both torch formats (about 1,300 files).
"""

from __future__ import annotations

import io
import os

import pytest

from safehub.findings import Verdict
from safehub.scan import ScanOptions, scan_file

pytest.importorskip("torch")
pytest.importorskip("joblib")

from tests.scanner.oracle.harmless_gen import Case, cases, oracle_accepts

_SUFFIX = {"numpy": ".npy", "joblib": ".joblib", "pickle": ".pkl",
           "safetensors": ".safetensors"}


def _scan(case: Case, options: ScanOptions | None = None) -> Verdict:
    suffix = ".npz" if case.name.startswith("npz/") else _SUFFIX.get(case.loader, ".pt")
    return scan_file(io.BytesIO(case.data), case.name.replace("/", "_") + suffix,
                     options=options).verdict


@pytest.mark.slow
def test_what_the_safe_loaders_accept_scans_clean() -> None:
    full = os.environ.get("SAFEHUB_HARMLESS_FULL") == "1"
    accepted = 0
    wrong = []
    for case in cases(quick=not full):
        if case.loader == "torchscript":
            assert _scan(case) is Verdict.UNSAFE, case.name
            assert _scan(case, ScanOptions(allow_torchscript=True)) is Verdict.CLEAN, case.name
            continue
        if not oracle_accepts(case):
            continue
        accepted += 1
        verdict = _scan(case)
        if verdict is not Verdict.CLEAN:
            wrong.append(f"{case.name}: {verdict.value}")
    assert accepted > 100, "the oracle accepts the ordinary files"
    assert not wrong, "\n".join(wrong)
