"""Differential test: the scanner's sparse verdict against torch's own validation.

Many real sparse checkpoints are written with ``torch.save`` (all five layouts, hybrid dense
dimensions, batch dimensions, int32 and int64 indices, no stored values, coalesced or not),
then copies of them with index bytes changed in the archive (out of range, negative,
unordered, a wrong last row pointer, ...). torch's own check is the oracle: each file is
loaded with ``torch.load(weights_only=True)`` under ``torch.sparse.
check_sparse_tensor_invariants(True)``, in a forked child since a bad file may crash it.
The scan must pass a file (no SH108) exactly when that check passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from safehub.findings import Verdict
from tests.scanner.conftest import rules, scan_one

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

# Loads each file in a forked child (torch imported once): "pass" when torch's validation
# accepts it, "fail" when it raises, "crash" when the child dies.
_ORACLE = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
import torch
out = {}
for path in json.loads(sys.stdin.read()):
    pid = os.fork()
    if pid == 0:
        try:
            with torch.sparse.check_sparse_tensor_invariants(True):
                torch.load(path, weights_only=True)
        except Exception:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    out[path] = ("pass" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else
                 "fail" if os.WIFEXITED(status) else "crash")
print(json.dumps(out))
"""


def _coo(rng: Any) -> list[Any]:
    out = []
    for _ in range(24):
        sparse_dim = int(rng.integers(1, 4))
        dense = tuple(int(d) for d in rng.integers(1, 4, size=int(rng.integers(0, 3))))
        shape = tuple(int(d) for d in rng.integers(1, 7, size=sparse_dim))
        nnz = int(rng.integers(0, 9))
        indices = torch.tensor(np.stack([rng.integers(0, d, size=nnz) for d in shape]),
                               dtype=torch.int64).reshape(sparse_dim, nnz)
        t = torch.sparse_coo_tensor(indices, torch.randn(nnz, *dense), shape + dense)
        out.extend([t, t.coalesce()])
    return out


def _compressed(rng: Any) -> list[Any]:
    out = []
    for layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        blocked = layout in (torch.sparse_bsr, torch.sparse_bsc)
        for _ in range(14):
            batch = tuple(int(d) for d in rng.integers(1, 3, size=int(rng.integers(0, 3))))
            dense_dim = int(rng.integers(0, 2))
            block = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if blocked else (1, 1)
            rows, cols = int(rng.integers(1, 5)), int(rng.integers(1, 5))
            count = int(rng.integers(0, rows * cols + 1))
            # the same number of specified blocks in every batch, as torch requires
            masks = [np.isin(np.arange(rows * cols), rng.choice(rows * cols, count,
                                                                 replace=False))
                     for _ in range(int(np.prod(batch)) if batch else 1)]
            mask = torch.tensor(np.stack(masks).reshape(*batch, rows, cols))
            mask = mask.repeat_interleave(block[0], -2).repeat_interleave(block[1], -1)
            shape = (*batch, rows * block[0], cols * block[1])
            dense = torch.randn(*shape, *([2] * dense_dim)) + 5
            dense = dense * mask.reshape(*shape, *([1] * dense_dim))
            t = dense.to_sparse(layout=layout, blocksize=block if blocked else None,
                                dense_dim=dense_dim)
            if rng.integers(0, 2):  # int32 indices
                cidx, pidx = ((t.crow_indices(), t.col_indices())
                              if layout in (torch.sparse_csr, torch.sparse_bsr)
                              else (t.ccol_indices(), t.row_indices()))
                t = torch.sparse_compressed_tensor(cidx.int(), pidx.int(), t.values(),
                                                   t.shape, layout=layout)
            out.append(t)
    return out


def _index_width(t: Any) -> int:
    if t.layout == torch.sparse_coo:
        return 8
    cidx = (t.crow_indices() if t.layout in (torch.sparse_csr, torch.sparse_bsr)
            else t.ccol_indices())
    return 8 if cidx.dtype == torch.int64 else 4


def _rewrite(src: Path, dst: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, data if info.filename == name else zin.read(info))


def _mutate(rng: Any, raw: bytes, width: int) -> bytes | None:
    """One change to index bytes: a value set out of range, negative, huge, to a
    neighbour's (repeats), swapped with a neighbour (order), or moved by one."""
    values = np.frombuffer(raw, dtype=f"<i{width}").astype(np.int64)
    if not len(values):
        return None
    values = values.copy()
    j = int(rng.integers(0, len(values)))
    kind = int(rng.integers(0, 6))
    if kind == 0:
        values[j] = -1
    elif kind == 1:
        values[j] = int(values.max()) + int(rng.integers(1, 3))
    elif kind == 2:
        values[j] = (1 << 31) - 1 if width == 4 else 1 << 40
    elif kind == 3 and j:
        values[j] = values[j - 1]
    elif kind == 4 and j:
        values[j], values[j - 1] = values[j - 1], values[j]
    else:
        values[j] += 1 if rng.integers(0, 2) else -1
    return values.astype(f"<i{width}").tobytes()


def test_scanner_agrees_with_torchs_sparse_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(20261204)
    torch.manual_seed(20261204)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse compressed support is in beta
        tensors = _coo(rng) + _compressed(rng)
    files: list[Path] = []
    for n, t in enumerate(tensors):
        path = tmp_path / f"valid{n}.pt"
        torch.save(t if n % 3 else {"weight": t, "step": n}, path)
        files.append(path)
        archive = zipfile.ZipFile(path)
        prefix = archive.namelist()[0].split("/")[0]
        # storage keys in save order: COO (indices, values); compressed (compressed, plain,
        # values)
        keys = ["0"] if t.layout == torch.sparse_coo else ["0", "1"]
        width = _index_width(t)
        for m in range(3):
            name = f"{prefix}/data/{keys[int(rng.integers(0, len(keys)))]}"
            changed = _mutate(rng, archive.read(name), width)
            if changed is None:
                continue
            bad = tmp_path / f"mutated{n}_{m}.pt"
            _rewrite(path, bad, name, changed)
            files.append(bad)
    run = subprocess.run([sys.executable, "-c", _ORACLE],
                         input=json.dumps([str(f) for f in files]), capture_output=True,
                         text=True, timeout=600, check=True)
    oracle = json.loads(run.stdout)
    disagree = []
    for path in files:
        report = scan_one(path)
        allowed = "SH108" not in rules(report)
        if allowed and report.verdict is not Verdict.CLEAN:
            disagree.append((path.name, "not clean", sorted(rules(report))))
        if allowed != (oracle[str(path)] == "pass"):
            disagree.append((path.name, oracle[str(path)], sorted(rules(report)),
                             [f.message[-160:] for f in report.findings]))
    outcomes = list(oracle.values())
    # the generated files exercise both sides of the check
    assert outcomes.count("pass") > 150 and outcomes.count("fail") > 150, outcomes
    assert not disagree, disagree
