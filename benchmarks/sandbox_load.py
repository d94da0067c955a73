"""Sandboxed load against torch.hub.load in-process, side by side.

    .venv/bin/python benchmarks/sandbox_load.py [--big-mib 1024] [--repeat 3]

Repos are generated under benchmarks/.work/sandbox: a tiny model (nn.Linear), and
one that ships a checkpoint of ``--big-mib`` MiB of float32 weights (default 1 GiB)
with two entrypoints: one returns ``torch.load(path, weights_only=True)``, the
other builds an ``nn.Sequential`` and loads the weights into it (the usual hub
entrypoint). Each big-load measurement runs in a fresh process so that peak RSS
is that load's own; wall time covers the call plus touching every tensor once
(sandboxed tensors are mapped lazily, so their pages are paid for on first touch).
The checkpoint is read once beforehand so both sides start from a warm page cache.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "sandbox"
sys.path.insert(0, str(ROOT))

TINY = '''
import torch

def tiny():
    torch.manual_seed(0)
    return torch.nn.Linear(16, 4)
'''

BIG = '''
import os, torch

def _weights():
    here = os.path.dirname(os.path.abspath(__file__))
    return torch.load(os.path.join(here, "weights.pt"), weights_only=True)

def state_dict():
    """A repo that ships weights and returns them."""
    return _weights()

def model():
    """The usual entrypoint: build the model, load the shipped weights into it."""
    weights = _weights()
    net = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096, bias=False) for _ in weights])
    net.load_state_dict(weights)
    return net
'''

ENTRYPOINTS = (("state_dict", "returns the shipped weights"),
               ("model", "builds the model and loads the shipped weights"))


def _make_repos(big_mib: int) -> tuple[Path, Path]:
    import torch

    tiny, big = WORK / "tiny", WORK / f"big-{big_mib}"
    for path, source in ((tiny, TINY), (big, BIG)):
        path.mkdir(parents=True, exist_ok=True)
        (path / "hubconf.py").write_text(source)
    weights = big / "weights.pt"
    if not weights.exists():
        count = max(1, big_mib // 64)  # 64 MiB float32 tensors
        torch.save({f"{i}.weight": torch.randn(4096, 4096) for i in range(count)}, weights)
    return tiny, big


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _touch(tensors: dict[str, Any]) -> float:
    return float(sum(float(t.sum()) for t in tensors.values()))


def _case(name: str, repo: Path, entry: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch
    import torch.hub

    if name == "inprocess":
        started = time.perf_counter()
        value = torch.hub.load(str(repo), entry, source="local", trust_repo=True, verbose=False)
        tensors = value.state_dict() if isinstance(value, torch.nn.Module) else value
        _touch(tensors)
        return {"wall_s": time.perf_counter() - started, "peak_rss_mib": _peak_rss_mib()}
    from safehub.sandbox import Sandbox, SandboxRequest

    with Sandbox() as sandbox:
        sandbox.run(SandboxRequest.for_load(WORK / "tiny", "tiny"))  # warm-up, not timed
        started = time.perf_counter()
        result = sandbox.run(SandboxRequest.for_load(repo, entry))
        _touch(result.tensors)
        wall = time.perf_counter() - started
        return {"wall_s": wall, "peak_rss_mib": _peak_rss_mib(),
                "child_peak_rss_mib": result.usage.get("max_rss_mb", 0.0),
                "timings": dict(result.timings)}


def _fresh(name: str, repo: Path, entry: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--case", name, "--repo", str(repo),
                          "--entry", entry], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _tiny_latency(repo: Path, calls: int) -> tuple[float, float, float]:
    import torch.hub

    from safehub.sandbox import Sandbox, SandboxRequest

    inprocess = []
    for _ in range(calls):
        started = time.perf_counter()
        torch.hub.load(str(repo), "tiny", source="local", trust_repo=True, verbose=False)
        inprocess.append(time.perf_counter() - started)
    request = SandboxRequest.for_load(repo, "tiny")
    warm = []
    with Sandbox() as sandbox:
        sandbox.run(request)
        for _ in range(calls):
            started = time.perf_counter()
            sandbox.run(request)
            warm.append(time.perf_counter() - started)
    cold = []
    for _ in range(3):
        started = time.perf_counter()
        with Sandbox() as sandbox:  # a fresh interpreter (and `import torch`) for the call
            sandbox.run(request)
        cold.append(time.perf_counter() - started)
    return statistics.median(inprocess), statistics.median(warm), statistics.median(cold)


def _big_rows(big: Path, size: str, repeat: int) -> list[str]:
    rows = []
    for entry, what in ENTRYPOINTS:
        runs: dict[str, list[dict[str, Any]]] = {"inprocess": [], "sandbox": []}
        for _ in range(repeat):
            for name in runs:  # interleaved, so drift hits both sides alike
                runs[name].append(_fresh(name, big, entry))
        med = {name: {key: statistics.median(r[key] for r in results)
                      for key in ("wall_s", "peak_rss_mib")}
               for name, results in runs.items()}
        child = statistics.median(r["child_peak_rss_mib"] for r in runs["sandbox"])
        wall_in, wall_sb = med["inprocess"]["wall_s"], med["sandbox"]["wall_s"]
        rss_in, rss_sb = med["inprocess"]["peak_rss_mib"], med["sandbox"]["peak_rss_mib"]
        rows += [
            f"| {size}, entrypoint {what}: wall time (load + touch) | {wall_in:.2f} s | "
            f"{wall_sb:.2f} s | {wall_sb / wall_in:.2f}x |",
            f"| {size}, entrypoint {what}: caller's peak RSS | {rss_in:.0f} MiB | "
            f"{rss_sb:.0f} MiB | {rss_sb / rss_in:.2f}x |",
            f"| {size}, entrypoint {what}: sandbox child's peak RSS (another process, gone "
            f"after the call) | | {child:.0f} MiB | |",
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Sandboxed load against torch.hub.load.")
    parser.add_argument("--big-mib", type=int, default=1024, help="checkpoint size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per big case")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--entry", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_case(args.case, Path(args.repo), args.entry)))
        return

    tiny, big = _make_repos(args.big_mib)
    (big / "weights.pt").read_bytes()  # warm the page cache for both sides
    t_in, t_warm, t_cold = _tiny_latency(tiny, 20)
    size = f"{args.big_mib} MiB" if args.big_mib % 1024 else f"{args.big_mib // 1024} GiB"
    rows = _big_rows(big, size, args.repeat)

    print(f"safehub sandbox vs torch.hub.load: {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} CPUs, {'root' if os.geteuid() == 0 else 'non-root'}; medians "
          f"of {args.repeat} fresh processes (tiny model: of 20 calls)\n")
    print("| measurement | torch.hub.load in-process | safehub sandbox | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| tiny model, latency per call | {t_in * 1e3:.1f} ms | {t_warm * 1e3:.1f} ms "
          f"(warm zygote) | {t_warm / t_in:.0f}x |")
    print(f"| tiny model, latency without the zygote | | {t_cold:.2f} s (fresh interpreter, "
          f"import torch) | {t_cold / t_in:.0f}x |")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
