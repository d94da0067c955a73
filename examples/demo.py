"""`make demo`: safehub's main jobs on the examples bundled in this repository.

Runs the real CLI (`python -m safehub ...`) so what you see is what a user sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / ".demo-out"
PROOF = OUT / "proof-of-attack"


def run(title: str, *args: str, expect: int | tuple[int, ...]) -> None:
    print(f"\n=== {title}\n$ safehub {' '.join(args)}", flush=True)
    env = dict(os.environ, SAFEHUB_DEMO_PROOF=str(PROOF), GITHUB_TOKEN="demo-secret-token")
    proc = subprocess.run([sys.executable, "-m", "safehub", *args], cwd=HERE, env=env)
    print(f"(exit code {proc.returncode})", flush=True)
    allowed = expect if isinstance(expect, tuple) else (expect,)
    if proc.returncode not in allowed:
        raise SystemExit(f"demo: expected exit code {expect}, got {proc.returncode}")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    run("1. Scan the bundled model files: one is poisoned", "scan", "models", expect=1)
    run("2. The clean files alone pass (exit 0)", "scan", "models/resnet_block_state_dict.pt",
        "models/config.pkl", expect=0)
    run("3. Why would loading the poisoned file be denied? The policy's decision trail",
        "policy", "explain", "--file", "models/poisoned_checkpoint.pt", expect=1)
    run("4. Which isolation layers this machine offers", "doctor", expect=(0, 1))
    run("5. Load a torch.hub repo's model: its code runs in the sandbox, tensors come back",
        "load", "hubrepo", "tiny_cnn", "--source", "local", "--out",
        str(OUT / "tiny_cnn.safetensors"), expect=0)
    run("6. A hostile repo: import-time attacks, run sandboxed", "load", "hostile_repo",
        "innocent_model", "--source", "local", "--out", str(OUT / "hostile.safetensors"),
        expect=(0, 1))
    report = OUT / "hostile.safetensors"
    if report.exists():
        from safetensors.torch import load_file

        text = bytes(load_file(report)["attack_report"].tolist()).decode()
        print("   what the hostile code reported from inside the sandbox:")
        for line in text.split("; "):
            print(f"     - {line}")
    if PROOF.exists():
        raise SystemExit(f"demo: the hostile repo wrote {PROOF}: containment failed")
    print(f"   {PROOF.name} does not exist: nothing escaped.")
    print("\ndemo finished: every step behaved as expected")


if __name__ == "__main__":
    main()
