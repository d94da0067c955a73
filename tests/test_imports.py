"""What each entry point imports: `safehub scan` never pays for torch, pydantic or fickling.

These check imports, not timings (timings belong to benchmarks/): the scan CLI's start-up
is most of its cost on ordinary files, and a stray import is how it regresses.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
from safehub.cli import main
code = main({args!r})
heavy = sorted(m for m in ("torch", "pydantic", "fickling", "numpy", "cryptography")
               if m in sys.modules)
print(code, ",".join(heavy))
"""


def _imports(*args: str) -> tuple[int, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    code, _, heavy = out.strip().rpartition("\n")[2].partition(" ")
    return int(code), [m for m in heavy.split(",") if m]


def test_scan_imports_nothing_heavy(tmp_path: Path) -> None:
    clean = tmp_path / "config.pkl"
    clean.write_bytes(pickle.dumps({"lr": 0.1}, protocol=4))
    code, heavy = _imports("-q", "scan", str(clean))
    assert code == 0
    assert heavy == []


def test_import_safehub_is_light() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, safehub; print(sorted("
                          "m for m in ('torch', 'pydantic', 'numpy') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"
