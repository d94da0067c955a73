"""`make demo`: safehub's main jobs on the examples bundled in this repository.

Runs the real CLI (`python -m safehub ...`) so what you see is what a user sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(title: str, *args: str, expect: int) -> None:
    print(f"\n=== {title}\n$ safehub {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "safehub", *args], cwd=HERE)
    print(f"(exit code {proc.returncode})", flush=True)
    if proc.returncode != expect:
        raise SystemExit(f"demo: expected exit code {expect}, got {proc.returncode}")


def main() -> None:
    run("1. Scan the bundled model files: one is poisoned", "scan", "models", expect=1)
    run("2. The clean files alone pass (exit 0)", "scan", "models/resnet_block_state_dict.pt",
        "models/config.pkl", expect=0)
    run("3. Why would loading the poisoned file be denied? The policy's decision trail",
        "policy", "explain", "--file", "models/poisoned_checkpoint.pt", expect=1)
    print("\ndemo finished: every step behaved as expected")


if __name__ == "__main__":
    main()
