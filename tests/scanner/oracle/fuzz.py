"""Differential fuzzer: generated and mutated inputs, real parsers against the scanner.

``python -m tests.scanner.oracle.fuzz --seconds 300`` (``make fuzz``) runs rounds of
generated inputs until the time is up and prints inputs, differentials and rates.
``run_round(seed, n)`` is what the test suite runs with fixed seeds: derandomized.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field

from tests.scanner.oracle import (
    PICKLE_READERS,
    file_differences,
    legacy_stream_differences,
    run_real,
    scan_bytes,
    stream_differences,
    streams_differences,
)
from tests.scanner.oracle.gen import container, mutate, pickle_program

__all__ = ["Outcome", "inputs_for", "run_round"]


@dataclass
class Outcome:
    inputs: int = 0
    differentials: list[tuple[str, bytes, list[str]]] = field(default_factory=list)


def inputs_for(seed: int, n: int, containers: int) -> list[tuple[str, bytes]]:
    """``n`` pickle streams (each for every pickle reader, and read stream after stream)
    and ``containers`` files."""
    rng = random.Random(seed)
    items: list[tuple[str, bytes]] = []
    for _ in range(n):
        data = pickle_program(rng)
        if rng.random() < 0.5:
            data = mutate(rng, data)
        items.extend((reader, data) for reader in PICKLE_READERS)
        items.append(("c_file_all", data))
    for _ in range(containers):
        data = pickle_program(rng)
        if rng.random() < 0.3:
            data = mutate(rng, data)
        items.append(container(rng, data))
    return items


def run_round(seed: int, n: int = 200, containers: int = 20) -> Outcome:
    items = inputs_for(seed, n, containers)
    reals = run_real(items)
    out = Outcome(inputs=n + containers)
    reports = {}
    for (reader, data), real in zip(items, reals, strict=True):
        if reader in PICKLE_READERS:
            diffs = stream_differences(reader, data, real)
        elif reader == "c_file_all":
            diffs = streams_differences(data, real)
        else:
            if data not in reports:
                reports[data] = scan_bytes(data)
            diffs = file_differences(reader, real, reports[data])
            if reader == "torch_legacy":
                diffs += legacy_stream_differences(data, real)
        if diffs:
            out.differentials.append((reader, data, diffs))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--batch", type=int, default=300)
    args = parser.parse_args(argv)
    start = time.monotonic()
    total = 0
    found: list[tuple[str, bytes, list[str]]] = []
    seed = args.seed
    while time.monotonic() - start < args.seconds:
        outcome = run_round(seed, args.batch, args.batch // 10)
        total += outcome.inputs
        for reader, data, diffs in outcome.differentials:
            found.append((reader, data, diffs))
            print(f"DIFFERENTIAL seed={seed} {reader} {data!r}\n  " + "\n  ".join(diffs),
                  flush=True)
        seed += 1
        elapsed = time.monotonic() - start
        print(f"{elapsed:7.1f}s  inputs {total}  ({total / elapsed:.0f}/s)  "
              f"differentials {len(found)}", flush=True)
    elapsed = time.monotonic() - start
    print(f"done: {total} inputs in {elapsed:.0f}s ({total / elapsed:.1f} inputs/s, "
          f"{len(found) / elapsed:.3f} differentials/s), {len(found)} differentials, "
          f"seeds {args.seed}..{seed - 1}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
