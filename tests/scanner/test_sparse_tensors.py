"""Sparse tensors: torch builds them from the file's indices unchecked (SH108).

``torch._utils._rebuild_sparse_tensor`` is what ``torch.save`` writes for every sparse
tensor, and torch's weights-only loader allows it. It builds the tensor with
``check_invariants=False``, and ``torch.load`` checks the indices afterwards only under
``torch.sparse.check_sparse_tensor_invariants``, which is off by default: a checkpoint whose
compressed indices run past its values loads, and its first ``to_dense()`` reads and writes
memory outside the tensor. The indices are tensor data, which the scan never reads, so a
sparse tensor is never passed as clean, however the rebuild function is reached.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner.conftest import rules, scan_one

torch = pytest.importorskip("torch")


def _bad_csr() -> object:
    """A 2x2 CSR tensor whose row pointers say 10**8 values where there is one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR support is in beta
        return torch.sparse_csr_tensor(torch.tensor([0, 10**8, 10**8]), torch.tensor([0]),
                                       torch.tensor([1.0]), (2, 2), check_invariants=False)


def test_sparse_tensor_with_bad_indices_crashes_its_loader_and_is_refused(
        tmp_path: Path) -> None:
    path = tmp_path / "sparse.pt"
    torch.save({"w": _bad_csr()}, path)
    # torch.load's defaults (weights_only=True) load it; its first use reads out of bounds
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1])['w']; print('loaded', flush=True); w.to_dense()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded"), run
    assert run.returncode == -signal.SIGSEGV, run
    report = scan_one(path)  # was CLEAN: every global in it is allowed
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_real_sparse_checkpoints_are_not_vouched_for(layout: str, tmp_path: Path) -> None:
    # The scan cannot tell good indices from bad ones without reading tensor data.
    dense = torch.eye(3)
    path = tmp_path / f"{layout}.pt"
    torch.save({"s": dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()}, path)
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and rules(report) == {"SH108"}


class _Reduce:
    def __init__(self, func: object, args: tuple[object, ...]):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def test_the_rebuild_function_is_refused_however_it_is_reached(tmp_path: Path) -> None:
    # Given to torch's own BUILD as its rebuild function, not called by REDUCE itself.
    rebuild = torch._utils._rebuild_sparse_tensor
    indirect = _Reduce(torch._tensor._rebuild_from_type_v2,
                       (rebuild, torch.Tensor, (torch.sparse_coo, ()), {}))
    path = tmp_path / "indirect.pkl"
    path.write_bytes(pickle.dumps({"w": indirect}, protocol=2))
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


def test_legacy_sparse_constructor_is_refused_under_the_permissive_policy(
        tmp_path: Path) -> None:
    # torch.sparse.FloatTensor(indices, values, size) (allowed, and in torch's weights-only
    # set) builds the same unchecked tensor; its only finding was SH177 (medium: its
    # arguments are tensors), which the permissive policy lets through.
    built = _Reduce(torch.sparse.FloatTensor, (
        _Reduce(torch.LongTensor, ([[0, 10**8], [0, 10**8]],)),
        _Reduce(torch.FloatTensor, ([1.0, 2.0],)), (4, 4)))
    path = tmp_path / "legacy.pkl"
    path.write_bytes(pickle.dumps({"w": built}, protocol=2))
    code = ("import pickle, sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = pickle.load(open(sys.argv[1], 'rb'))['w']; print('loaded', flush=True); "
            "w.coalesce().to_dense()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded") and run.returncode == -signal.SIGSEGV, run
    report = scan_one(path, ScanOptions(block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
