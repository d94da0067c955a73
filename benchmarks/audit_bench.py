"""Audit benchmark: a torch hub cache of 1,000 checkpoints (10 GiB) against picklescan and
modelscan on the same folder.

    .venv/bin/python benchmarks/audit_bench.py            # generate, time, print markdown
    .venv/bin/python benchmarks/audit_bench.py --setup    # first create the competitors' venvs

The cache is ``benchmarks/.work/audit-cache/torch/hub/checkpoints``: real ``torch.save``
checkpoints (zip format and the legacy format, torchvision-like layer names), named as
torch.hub names downloads (``<arch>-<first 8 hex of the SHA-256>.pth``), plus a few
malicious ones. Tensor data is zeros written as holes (sparse files), so 10 GiB of
checkpoints take a few hundred MB of disk and generate in seconds; every tool still sees
10 GiB of files and reads whatever it reads (holes read as zeros, from memory, so reading
is faster than from a real disk: the time to hash is the CPU's).

Timed (each tool's CLI in a fresh process, as a user runs it, median of ``--reps``):
``safehub audit`` first run (state discarded: every file hashed against its name's digest
and scanned) and incremental run (state kept: nothing changed), ``safehub scan`` (scanner
only), ``picklescan --path`` and ``modelscan -p``. Competitors run from their own venvs
(``benchmarks/.work/venvs``, created by ``--setup`` or ``make bench``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _measure import Run, Timing, repeat, run_once
from _tools import WORK, Tool, available, setup_venvs

HERE = Path(__file__).resolve().parent
CACHE = WORK / "audit-cache"
BLOCK = 4096
MALICIOUS = 5


def log(msg: str) -> None:
    print(f"audit-bench: {msg}", file=sys.stderr, flush=True)


# --- generation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A checkpoint's bytes as extents: what is not zero, and the total size."""

    arch: str
    size: int
    extents: tuple[tuple[int, bytes], ...]
    sha256: str


def _state_dict(rng: random.Random, target: int) -> dict[str, object]:
    """torchvision-like names and shapes, zeros, about ``target`` bytes of float32."""
    import torch

    state: dict[str, object] = {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    total = 1000 * 513 * 4
    stage = 0
    while total < target:
        stage += 1
        width = rng.choice([32, 64, 96, 128, 160, 192, 256])
        for block in range(rng.randint(1, 3)):
            for conv in (1, 2):
                if total >= target:
                    break
                prefix = f"layer{stage}.{block}"
                state[f"{prefix}.conv{conv}.weight"] = torch.zeros(width, width, 3, 3)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    state[f"{prefix}.bn{conv}.{name}"] = torch.zeros(width)
                state[f"{prefix}.bn{conv}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
                total += width * width * 9 * 4 + width * 16 + 8
    return state


def _extents(data: bytes) -> tuple[tuple[int, bytes], ...]:
    zero = bytes(BLOCK)
    out: list[tuple[int, bytes]] = []
    start = None
    for offset in range(0, len(data), BLOCK):
        chunk = data[offset:offset + BLOCK]
        if chunk != zero[:len(chunk)]:
            if start is None:
                start = offset
        elif start is not None:
            out.append((start, data[start:offset]))
            start = None
    if start is not None:
        out.append((start, data[start:]))
    return tuple(out)


def _templates(count: int, mean_size: int, seed: int) -> list[Template]:
    import torch

    rng = random.Random(seed)
    templates = []
    for i in range(count):
        target = int(mean_size * rng.uniform(0.5, 1.5))
        legacy = i % 4 == 3  # a quarter in the pre-1.6 format (still common on model hubs)
        buf = io.BytesIO()
        torch.save(_state_dict(rng, target), buf, _use_new_zipfile_serialization=not legacy)
        data = buf.getvalue()
        arch = f"{'legacy' if legacy else 'resnet'}{i:02d}"
        templates.append(Template(arch, len(data), _extents(data),
                                  hashlib.sha256(data).hexdigest()))
    return templates


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo audit-bench payload",)


def _write_sparse(path: Path, template: Template) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset, data in template.extents:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, template.size)
    finally:
        os.close(fd)


def generate(files: int, total_gib: float, seed: int) -> tuple[Path, int]:
    """The cache (regenerated when its parameters changed); returns (hub dir, bytes)."""
    hub = CACHE / "torch" / "hub"
    stamp = CACHE / "params.json"
    params = {"files": files, "total_gib": total_gib, "seed": seed, "version": 2}
    ckpt = hub / "checkpoints"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        size = sum(p.stat().st_size for p in ckpt.iterdir())
        log(f"reusing {ckpt} ({files} files, {size / (1 << 30):.1f} GiB)")
        return hub, size
    shutil.rmtree(CACHE, ignore_errors=True)
    ckpt.mkdir(parents=True)
    started = time.perf_counter()
    mean = int(total_gib * (1 << 30) / files)
    templates = _templates(40, mean, seed)
    total = 0
    rng = random.Random(seed)
    for i in range(files - MALICIOUS):
        t = templates[rng.randrange(len(templates))]
        _write_sparse(ckpt / f"{t.arch}_{i:04d}-{t.sha256[:8]}.pth", t)
        total += t.size
    import torch

    for i in range(MALICIOUS):
        buf = io.BytesIO()
        torch.save({"fc.weight": torch.zeros(10, 10), "hook": _Payload()}, buf)
        (ckpt / f"evil_{i}.pth").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    (hub / "trusted_list").write_text("")
    stamp.write_text(json.dumps(params))
    log(f"generated {files} checkpoints, {total / (1 << 30):.2f} GiB apparent, "
        f"{_disk_usage(CACHE) / (1 << 20):.0f} MiB on disk, in "
        f"{time.perf_counter() - started:.1f} s")
    return hub, total


def _disk_usage(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# --- timing -----------------------------------------------------------------------------------


@dataclass
class Row:
    tool: str
    mode: str
    timing: Timing
    note: str = ""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SAFEHUB_POLICY", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(NO_COLOR="1", HF_HUB_OFFLINE="1", SAFEHUB_NO_PROGRESS="1")
    return env


def _flagged(run: Run) -> str:
    return {0: "clean", 1: "findings", 2: "errors"}.get(run.rc, f"exit {run.rc}")


def time_all(hub: Path, size: int, tools: list[Tool], reps: int, timeout: float,
             slow: float) -> list[Row]:
    env = _env()
    scratch = WORK / "audit-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    state = scratch / "audit-state.json"
    ckpt = hub / "checkpoints"
    python = sys.executable

    def run(argv: Sequence[str]) -> Run:
        return run_once(argv, cwd=scratch, env=env, timeout_s=timeout, capture=True)

    # Untimed: bytecode caches, and one pass over the files (page cache).
    small = scratch / "warm"
    small.mkdir()
    shutil.copy(next(p for p in sorted(ckpt.iterdir()) if p.name.startswith("resnet")), small)
    run([python, "-m", "safehub", "audit", str(small), "--no-state"])
    for tool in tools:
        if tool.name != "safehub":
            run(tool.command([small]))
    rows: list[Row] = []
    audit = [python, "-m", "safehub", "audit", str(hub), "--state", str(state), "-q"]

    def first() -> Run:
        state.unlink(missing_ok=True)
        return run(audit)

    log("timing safehub audit (first run)")
    rows.append(Row("safehub audit", f"first run: hash {size / (1 << 30):.1f} GiB against the "
                    "names' digests, scan",
                    repeat(first, reps, slow_s=slow)))
    log("timing safehub audit (incremental)")
    run(audit)  # make sure the state is complete
    rows.append(Row("safehub audit", "incremental: nothing changed",
                    repeat(lambda: run(audit), reps, slow_s=slow)))
    log("timing safehub audit (plain folder)")
    plain_state = scratch / "plain-state.json"
    plain = [python, "-m", "safehub", "audit", str(ckpt), "--state", str(plain_state), "-q"]

    def plain_first() -> Run:
        plain_state.unlink(missing_ok=True)
        return run(plain)

    rows.append(Row("safehub audit", "first run, `checkpoints/` as a plain folder (no recorded "
                    "digests: scan only)", repeat(plain_first, reps, slow_s=slow)))
    log("timing safehub scan")
    rows.append(Row("safehub scan", "scan only (no integrity, no state)",
                    repeat(lambda: run([python, "-m", "safehub", "scan", str(ckpt), "-q"]),
                           reps, slow_s=slow)))
    for tool in tools:
        if tool.name in ("safehub", "picklescan --strict") or tool.name not in (
                "picklescan", "modelscan"):
            continue
        log(f"timing {tool.name}")
        rows.append(Row(tool.name, "scan", repeat(lambda t=tool: run(t.command([ckpt])), reps,
                                                    slow_s=slow), note=tool.version()))
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


def table(rows: list[Row], files: int, size: int) -> str:
    base = rows[0].timing.median_s
    lines = [
        f"Cache: {files} torch checkpoints ({MALICIOUS} malicious), {size / (1 << 30):.1f} GiB, "
        f"in torch.hub's `checkpoints/` layout. {os.cpu_count()} CPUs. Peak RSS is the "
        "command's own process (audit's worker processes are not included).",
        "",
        "| tool | run | wall time (s), median (min-max) | vs safehub audit (first run) | "
        "peak RSS (MiB) | exit |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        t = row.timing
        walls = [r.wall_s for r in t.runs]
        spread = f" ({min(walls):.2f}-{max(walls):.2f})" if len(walls) > 1 else " (1 run)"
        wall = f"{t.median_s:.2f}{spread}" + (" (timed out)" if t.timed_out else "")
        ratio = f"{t.median_s / base:.2f}x" if base else "-"
        name = row.tool + (f" {row.note}" if row.note else "")
        lines.append(f"| {name} | {row.mode} | {wall} | {ratio} | {t.max_rss_mib:.0f} | "
                     f"{_flagged(t.last)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--setup", action="store_true", help="create the competitors' venvs first")
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--gib", type=float, default=10.0, help="apparent size of the cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--slow", type=float, default=60.0, help="do not repeat runs slower than this")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--keep", action="store_true", help="keep the generated cache")
    p.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--output", default=str(WORK / "audit_results.md"))
    p.add_argument("--only-safehub", action="store_true", help="skip picklescan and modelscan")
    args = p.parse_args(argv)

    WORK.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(WORK).free
    if free < 4 << 30:
        log(f"only {free >> 20} MiB free under {WORK}: refusing to generate the cache")
        return 2
    if args.setup:
        setup_venvs(only=["picklescan", "modelscan"])
    tools, missing = available()
    if args.only_safehub:
        tools = [t for t in tools if t.name == "safehub"]
    for line in missing:
        if line.startswith(("picklescan", "modelscan")):
            log(line)
    if args.generate_only:
        generate(args.files, args.gib, args.seed)
        return 0
    # Generated in a child process: this one never imports torch, because a child's peak
    # RSS starts from its parent's at fork and would inflate every measurement.
    subprocess.run([sys.executable, __file__, "--generate-only", "--files", str(args.files),
                    "--gib", str(args.gib), "--seed", str(args.seed)], check=True)
    hub, size = generate(args.files, args.gib, args.seed)
    try:
        rows = time_all(hub, size, tools, args.reps, args.timeout, args.slow)
    finally:
        if not args.keep:
            shutil.rmtree(CACHE, ignore_errors=True)
    text = f"### safehub audit: {args.files:,} checkpoints\n\n" + table(rows, args.files, size)
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
