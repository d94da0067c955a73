"""Per-call latency of safehub.load against torch.hub.load, side by side, in one run.

    python benchmarks/prepare_repos.py          # once: real repo snapshots
    .venv/bin/python benchmarks/hub_latency.py [--calls 5] [--runs 5]

(a) Real repositories (checked out under benchmarks/.work/repos; random-init
entrypoints, one seed, no network): one process per side calls the entrypoint
``--calls`` times; the first call (torch.hub: imports the repo; safehub: starts the
zygote) is shown apart, the warm figure is the median of the later calls.
(b) A tiny entrypoint, whole process (interpreter start, imports, the call, exit):
``python -c "torch.hub.load(...)"`` against ``python -c "safehub.load(...)"`` and
``python -m safehub load ... --out x.safetensors``; the median of ``--runs``, the
sides interleaved.
(c) The 1 GiB model (``--big-mib``): a repo whose entrypoint builds the model and loads
its shipped weights; wall time and the caller's peak RSS, one fresh process per side.
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
    ("rwightman_gen-efficientnet-pytorch", "mixnet_s", {"pretrained": False}, ()),
    ("pytorch_vision", "resnet18", {}, ()),
    ("pytorch_vision", "mobilenet_v3_small", {}, ()),
    ("facebookresearch_dino", "dino_vits16", {"pretrained": False}, ("torchvision",)),
    ("mateuszbuda_brain-segmentation-pytorch", "unet", {}, ()),
    ("chenyaofo_pytorch-cifar-models", "cifar10_resnet20", {"pretrained": False}, ()),
    ("lukemelas_EfficientNet-PyTorch", "efficientnet_b0", {"pretrained": None}, ()),
    ("milesial_Pytorch-UNet", "unet_carvana", {"pretrained": False}, ()),
    ("isl-org_MiDaS", "DPT_Hybrid", {"pretrained": False}, ("timm",)),
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

# The 1 GiB case: a repo shipping 1 GiB of float32 weights whose entrypoint builds the
# model and loads them (the usual hub entrypoint). One fresh process per side: a tiny
# call first (torch imported; safehub's zygote started), then the timed call plus one
# touch of every tensor (safehub's tensors are mapped lazily), then the process's peak RSS.
BIG = """
import os, torch

def model():
    here = os.path.dirname(os.path.abspath(__file__))
    weights = torch.load(os.path.join(here, "weights.pt"), weights_only=True)
    net = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096, bias=False) for _ in weights])
    net.load_state_dict(weights)
    return net
"""

BIG_DRIVER = """
import json, resource, sys, time
side, tiny, big = sys.argv[1], sys.argv[2], sys.argv[3]
if side == "torch.hub":
    import torch
    def call(repo, entry):
        return torch.hub.load(repo, entry, source="local", trust_repo=True).state_dict()
else:
    import safehub
    def call(repo, entry):
        return safehub.load(repo, entry, source="local")
call(tiny, "tiny")
t = time.perf_counter()
tensors = call(big, "model")
total = sum(float(v.sum()) for v in tensors.values())
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
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


def big_model(tmp: Path, tiny: Path, mib: int, runs: int) -> list[str]:
    import torch

    repo = tmp / "big"
    repo.mkdir()
    repo.chmod(0o755)
    (repo / "hubconf.py").write_text(BIG)
    count = max(1, mib // 64)  # 64 MiB float32 tensors
    torch.save({f"{i}.weight": torch.randn(4096, 4096) for i in range(count)},
               repo / "weights.pt")
    (repo / "weights.pt").chmod(0o644)
    (repo / "weights.pt").read_bytes()  # a warm page cache for both sides
    runs_by_side: dict[str, list[dict[str, float]]] = {"torch.hub": [], "safehub": []}
    for _ in range(runs):
        for side, results in runs_by_side.items():  # interleaved: drift hits both alike
            out = subprocess.run([sys.executable, "-c", BIG_DRIVER, side, str(tiny), str(repo)],
                                 check=True, capture_output=True, text=True, timeout=1800,
                                 cwd=tempfile.gettempdir()).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    med = {side: {key: statistics.median(r[key] for r in results)
                  for key in ("wall_s", "peak_rss_mib")}
           for side, results in runs_by_side.items()}
    hub, safe = med["torch.hub"], med["safehub"]
    size = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
    return ["", f"| {size} model (build + load shipped weights), API, warm process | torch.hub "
            "| safehub | ratio |", "|---|---|---|---|",
            f"| wall time (call + touch every tensor) | {hub['wall_s']:.2f} s | "
            f"{safe['wall_s']:.2f} s | {safe['wall_s'] / hub['wall_s']:.2f} |",
            f"| caller's peak RSS | {hub['peak_rss_mib']:.0f} MiB | "
            f"{safe['peak_rss_mib']:.0f} MiB | {safe['peak_rss_mib'] / hub['peak_rss_mib']:.2f} |"]


def compile_safehub() -> None:
    """Compile the safehub the drivers import, as installing it does: a checkout run
    with ``PYTHONDONTWRITEBYTECODE`` would otherwise compile its modules from source in
    every process (0.2 s the API side paid and torch's installed modules did not)."""
    spec = importlib.util.find_spec("safehub")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            subprocess.run([sys.executable, "-m", "compileall", "-q", folder], check=True,
                           stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=1024,
                        help="size of the big model's weights (0: leave it out)")
    parser.add_argument("--only", help="run only the cases whose repo:entry contains this")
    args = parser.parse_args(argv)
    compile_safehub()
    load_before = os.getloadavg()
    lines = [f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
             f"{args.calls} calls per process, whole-process median of {args.runs}.", "",
             "| repo:entrypoint | torch.hub warm | safehub warm | ratio | torch.hub first "
             "| safehub first |", "|---|---|---|---|---|---|"]
    skipped = []
    for folder, entry, kwargs, needs in CASES:
        if args.only and args.only not in f"{folder}:{entry}":
            continue
        repo = REPOS / folder
        if not (repo / "hubconf.py").is_file():
            skipped.append(f"{folder}: not checked out (python benchmarks/prepare_repos.py)")
            continue
        missing = [p for p in needs if importlib.util.find_spec(p) is None]
        if missing:
            skipped.append(f"{folder}:{entry}: needs {', '.join(missing)}")
            continue
        log(f"{folder}:{entry} ...")
        try:
            hub = per_call(repo, entry, kwargs, args.calls, "torch.hub")
        except subprocess.CalledProcessError as exc:
            last = (exc.stderr.strip().splitlines() or ["(no output)"])[-1]
            skipped.append(f"{folder}:{entry}: torch.hub fails here too ({last[:160]})")
            continue
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
        commands = {
            "hub": [py, "-c", "import torch; torch.hub.load("
                    f"{str(repo)!r}, 'tiny', source='local', trust_repo=True)"],
            "api": [py, "-c", f"import safehub; safehub.load({str(repo)!r}, 'tiny', "
                    "source='local')"],
            "cli": [py, "-m", "safehub", "load", str(repo), "tiny", "--source", "local",
                    "--out", str(out)]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():  # interleaved: drift hits every side alike
                times[name].append(whole_process(cmd, 1))
        hub_s, api_s, cli_s = (statistics.median(times[n]) for n in ("hub", "api", "cli"))
        lines += ["", "| tiny entrypoint, whole process | time | ratio to torch.hub |",
                  "|---|---|---|",
                  f"| `python -c \"torch.hub.load(...)\"` | {hub_s:.2f} s | 1.00 |",
                  f"| `python -c \"safehub.load(...)\"` | {api_s:.2f} s | "
                  f"{api_s / hub_s:.2f} |",
                  f"| `python -m safehub load ... --out x.safetensors` | {cli_s:.2f} s | "
                  f"{cli_s / hub_s:.2f} |"]
        if args.big_mib:
            log("1 GiB model ...")
            lines += big_model(Path(tmp), repo, args.big_mib, max(1, min(args.runs, 3)))
    load_after = os.getloadavg()
    lines += ["", f"Load average (1, 5, 15 min) at the start: "
              f"{', '.join(f'{x:.2f}' for x in load_before)}; at the end: "
              f"{', '.join(f'{x:.2f}' for x in load_after)}."]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "hub_results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
