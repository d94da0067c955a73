"""What the one-snapshot-per-load guarantee costs: torch.load of a 1 GiB checkpoint, plain
and under ``safehub.enforce()`` (sealed memfd snapshot + scan + weights-only load of the
snapshot), side by side.

    .venv/bin/python benchmarks/snapshot_bench.py [--size-mib 1024] [--reps 3]

Needs the file's size in free disk and about three times it in free memory (the page
cache, the snapshot, the loaded tensors). Each time is the median of ``--reps`` runs in
this warm interpreter; the file is read once before timing, so the source comes from
the page cache in every row (as for a file just downloaded or loaded before).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        del result
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    import safehub
    from safehub._snapshot import Snapshot

    with tempfile.TemporaryDirectory(prefix="safehub-snapshot-bench-") as tmp:
        path = Path(tmp) / "model.pt"
        # Shaped like a model: 4 MiB weight matrices.
        count = max(1, args.size_mib // 4)
        torch.save({f"layer{i}.weight": torch.full((1024, 1024), float(i))
                    for i in range(count)}, path)
        size = os.path.getsize(path)
        path.read_bytes()  # warm the page cache

        rows: list[tuple[str, float]] = []
        rows.append(("torch.load (plain, weights_only=True)",
                     _median(lambda: torch.load(path, weights_only=True), args.reps)))

        def snapshot_only() -> None:
            with Snapshot.of_path(path):
                pass

        rows.append(("snapshot only (memfd + sendfile + seals)",
                     _median(snapshot_only, args.reps)))

        def snapshot_hash() -> None:
            with Snapshot.of_path(path) as snap:
                _ = snap.sha256

        rows.append(("snapshot + SHA-256 (hub cache hit, convert)",
                     _median(snapshot_hash, args.reps)))
        with safehub.enforce("default"):
            rows.append(("torch.load under enforce() (snapshot + scan + mapped load)",
                         _median(lambda: torch.load(path), args.reps)))
            rows.append(("torch.load(mmap=False) under enforce() (tensors copied out)",
                         _median(lambda: torch.load(path, mmap=False), args.reps)))

    base = rows[0][1]
    print(f"checkpoint: {size / (1 << 20):.0f} MiB, median of {args.reps}\n")
    print("| operation | seconds | ratio to plain torch.load |")
    print("|---|---:|---:|")
    for name, secs in rows:
        print(f"| {name} | {secs:.3f} | {secs / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
