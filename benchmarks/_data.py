"""What is scanned: the labelled shared corpus, and generated checkpoints of 1 MiB to 1 GiB."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _tools import WORK

__all__ = ["SIZES", "Checkpoint", "Sample", "find_corpus", "make_checkpoints", "stage_corpus"]

MIB = 1 << 20
SIZES = {"1MiB": MIB, "16MiB": 16 * MIB, "256MiB": 256 * MIB, "1GiB": 1024 * MIB}
# Formats written for every size: what torch.save writes today, what it wrote before 1.6
# (still common on model hubs), and a plain pickle of numpy arrays (sklearn/joblib-style).
FORMATS = ("torch-zip", "torch-legacy", "numpy-pickle")


@dataclass(frozen=True)
class Sample:
    """One labelled corpus file."""

    rel: str  # e.g. "malicious/m_posix_system_p0.pkl"
    label: str  # malicious | benign | benign-needs-policy
    path: Path  # the staged copy that is scanned


@dataclass(frozen=True)
class Checkpoint:
    """One generated benign checkpoint."""

    fmt: str
    size_name: str
    path: Path

    @property
    def size_mib(self) -> float:
        return self.path.stat().st_size / MIB


def find_corpus(explicit: str | None) -> Path | None:
    """``--corpus``, else ``$SAFEHUB_CORPUS``, else ``../shared/corpus`` beside the repo."""
    candidates = [explicit, os.environ.get("SAFEHUB_CORPUS"),
                  str(Path(__file__).resolve().parents[2] / "shared" / "corpus")]
    for c in candidates:
        if c and (Path(c) / "labels.json").is_file():
            return Path(c)
    return None


def stage_corpus(corpus: Path) -> tuple[Path, list[Sample]]:
    """Copy the labelled files (only those: not labels.json, README or the aux/ helpers) into
    one folder that every tool scans, checking each against its recorded sha256."""
    labels = json.loads((corpus / "labels.json").read_text(encoding="utf-8"))["samples"]
    root = WORK / "corpus"
    if root.exists():
        shutil.rmtree(root)
    samples = []
    for rel, meta in sorted(labels.items()):
        src = corpus / rel
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        digest = hashlib.sha256(dst.read_bytes()).hexdigest()
        if digest != meta["sha256"]:
            raise SystemExit(f"bench: {src} does not match labels.json (sha256 {digest})")
        samples.append(Sample(rel, meta["label"], dst))
    return root, samples


def _layout(total: int) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and float32 shapes adding up to ``total`` bytes, shaped like a model:
    weight matrices of up to 4 MiB with a bias vector each (a 1 GiB file has ~500 tensors,
    like a real 250M-parameter network)."""
    cols = 1024
    weight = min(4 * MIB, total)
    rows = weight // (4 * cols)
    layers = max(1, round(total / weight))
    out: list[tuple[str, tuple[int, ...]]] = []
    for i in range(layers):
        out.append((f"layers.{i}.weight", (rows, cols)))
        out.append((f"layers.{i}.bias", (cols,)))
    return out


def _arrays(total: int) -> dict[str, object]:
    import numpy as np

    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in _layout(total)}


def _write(fmt: str, total: int, dst: Path) -> None:
    arrays = _arrays(total)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    if fmt == "numpy-pickle":
        with tmp.open("wb") as fh:
            pickle.dump(arrays, fh)  # default protocol, as a user's pickle.dump does
    else:
        import torch

        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
        torch.save(state, tmp, _use_new_zipfile_serialization=(fmt == "torch-zip"))
    tmp.replace(dst)


def make_checkpoints(sizes: list[str], log: Callable[[str], None]) -> list[Checkpoint]:
    """Generate (once; reused when present) one file per format and size."""
    folder = WORK / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for size_name in sizes:
        for fmt in FORMATS:
            ext = ".pkl" if fmt == "numpy-pickle" else ".pt"
            path = folder / f"{fmt}-{size_name}{ext}"
            if not path.exists():
                log(f"bench: generating {path.name}")
                # In a child process: the harness stays small, and a tool's peak-memory
                # figure (which on Linux starts from the forking process's) stays its own.
                subprocess.run([sys.executable, __file__, fmt, str(SIZES[size_name]),
                                str(path)], check=True)
            out.append(Checkpoint(fmt, size_name, path))
    return out


if __name__ == "__main__":
    _write(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
