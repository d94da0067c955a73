"""Per-call latency of safehub.load against torch.hub.load, side by side, in one run.

    python benchmarks/prepare_repos.py          # once: real repo snapshots
    .venv/bin/python benchmarks/hub_latency.py [--calls 5] [--runs 5]

(a) Real repositories (checked out under benchmarks/.work/repos; random-init
entrypoints, one seed, no network): one process per side calls the entrypoint
``--calls`` times; the first call (torch.hub: imports the repo; safehub: starts the
zygote) is shown apart, the warm figure is the median of the later calls.
(b) A tiny entrypoint, whole process (interpreter start, imports, the call, exit):
``python -c "torch.hub.load(...)"`` against ``python -c "safehub.load(...)"`` and
``python -m safehub load ... --out x.safetensors``; the median of ``--runs``.
Ratios are safehub / torch.hub (1.0 = as fast). Markdown goes to stdout and to
benchmarks/hub_results.md. Timings live here only, never in the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REPOS = HERE / ".work" / "repos"

# (repo folder, entrypoint, kwargs, packages it needs)
CASES = [
    ("facebookresearch_dinov2", "dinov2_vits14", {"pretrained": False}, ()),
    ("rwightman_gen-efficientnet-pytorch", "tf_efficientnet_b0", {"pretrained": False}, ()),
    ("rwightman_gen-efficientnet-pytorch", "mobilenetv3_large_100", {}, ()),
    ("rwightman_gen-efficientnet-pytorch", "mixnet_s", {"pretrained": False}, ()),
    ("facebookresearch_dinov2", "dinov2_vits14_reg", {"pretrained": False}, ()),
    ("isl-org_MiDaS", "DPT_Hybrid", {"pretrained": False}, ("timm",)),
    ("snakers4_silero-vad", "silero_vad", {}, ("torchaudio",)),
]

DRIVER = """
import json, sys, time
side, repo, entry = sys.argv[1], sys.argv[2], sys.argv[3]
kwargs, calls = json.loads(sys.argv[4]), int(sys.argv[5])
t0 = time.perf_counter()
if side == "torch.hub":
    import torch
    def call():
        torch.manual_seed(0)
        return torch.hub.load(repo, entry, source="local", trust_repo=True, **kwargs)
else:
    import safehub
    def call():
        return safehub.load(repo, entry, source="local", seed=0, **kwargs)
imported = time.perf_counter() - t0
times = []
for _ in range(calls):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": imported, "times": times}))
"""

TINY = """
import torch


def tiny():
    return torch.nn.Linear(16, 4)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def per_call(repo: Path, entry: str, kwargs: dict[str, object], calls: int,
             side: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", DRIVER, side, str(repo), entry,
                          json.dumps(kwargs), str(calls)], check=True, capture_output=True,
                         text=True, timeout=1800, cwd=tempfile.gettempdir()).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return {"import_s": data["import_s"], "first_s": data["times"][0],
            "warm_s": statistics.median(data["times"][1:])}


def whole_process(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=600, cwd=tempfile.gettempdir())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    lines = [f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
             f"{args.calls} calls per process, whole-process median of {args.runs}.", "",
             "| repo:entrypoint | torch.hub warm | safehub warm | ratio | torch.hub first "
             "| safehub first |", "|---|---|---|---|---|---|"]
    skipped = []
    for folder, entry, kwargs, needs in CASES:
        repo = REPOS / folder
        if not (repo / "hubconf.py").is_file():
            skipped.append(f"{folder}: not checked out (python benchmarks/prepare_repos.py)")
            continue
        missing = [p for p in needs if importlib.util.find_spec(p) is None]
        if missing:
            skipped.append(f"{folder}:{entry}: needs {', '.join(missing)}")
            continue
        log(f"{folder}:{entry} ...")
        hub = per_call(repo, entry, kwargs, args.calls, "torch.hub")
        safe = per_call(repo, entry, kwargs, args.calls, "safehub")
        lines.append(f"| {folder}:{entry} | {hub['warm_s'] * 1000:.0f} ms | "
                     f"{safe['warm_s'] * 1000:.0f} ms | {safe['warm_s'] / hub['warm_s']:.2f} | "
                     f"{hub['first_s']:.2f} s | {safe['first_s']:.2f} s |")

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "tiny"
        repo.mkdir()
        repo.chmod(0o755)
        Path(tmp).chmod(0o755)
        (repo / "hubconf.py").write_text(TINY)
        out = Path(tmp) / "tiny.safetensors"
        py = sys.executable
        hub_s = whole_process([py, "-c", "import torch; torch.hub.load("
                               f"{str(repo)!r}, 'tiny', source='local', trust_repo=True)"],
                              args.runs)
        api_s = whole_process([py, "-c", f"import safehub; safehub.load({str(repo)!r}, 'tiny', "
                               "source='local')"], args.runs)
        cli_s = whole_process([py, "-m", "safehub", "load", str(repo), "tiny", "--source",
                               "local", "--out", str(out)], args.runs)
    lines += ["", "| tiny entrypoint, whole process | time | ratio to torch.hub |",
              "|---|---|---|",
              f"| `python -c \"torch.hub.load(...)\"` | {hub_s:.2f} s | 1.00 |",
              f"| `python -c \"safehub.load(...)\"` | {api_s:.2f} s | {api_s / hub_s:.2f} |",
              f"| `python -m safehub load ... --out x.safetensors` | {cli_s:.2f} s | "
              f"{cli_s / hub_s:.2f} |"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "hub_results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
