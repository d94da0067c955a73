"""Side-by-side benchmark: safehub against picklescan, modelscan, fickling and modelaudit.

    make bench                       # sets up the competitors' venvs, then runs this
    .venv/bin/python benchmarks/run.py [--setup] [--sizes 1MiB,16MiB] [--no-corpus] ...

(a) the labelled corpus in ../shared/corpus: attacks flagged, false alarms, errors, and the
wall time of one run over the whole corpus; (b) generated benign checkpoints of 1 MiB to
1 GiB: wall time per file. Every tool runs as a user runs it (its CLI in a subprocess,
interpreter start included); times are medians of several runs; ratios are to safehub's CLI.
Markdown goes to stdout and to benchmarks/results.md. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _data import SIZES, find_corpus, make_checkpoints, stage_corpus
from _measure import Run, Timing, read_through, repeat, run_once
from _report import CorpusResult, SizeResult, corpus_tables, size_tables
from _tools import TOOLS, WORK, Tool, Verdict, available, setup_venvs

HERE = Path(__file__).resolve().parent

# Timed in a fresh interpreter that imports safehub once and then calls the API repeatedly.
_API_DRIVER = """
import json, sys, time
t0 = time.perf_counter()
from safehub.scan import scan
imported = time.perf_counter() - t0
reps, paths = int(sys.argv[1]), sys.argv[2:]
times = []
for _ in range(reps):
    t = time.perf_counter()
    report = scan(paths)
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": imported, "times": times, "files": len(report.files),
                  "unsafe": len(report.unsafe)}))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SAFEHUB_POLICY", None)  # safehub runs with its built-in default policy
    # Compiled bytecode is what users have (pip writes it at install); without it every run
    # of an editable install would re-compile its sources.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # modelaudit sends usage telemetry unless told not to; no tool should touch the network.
    env.update(PROMPTFOO_DISABLE_TELEMETRY="1", NO_ANALYTICS="1", NO_COLOR="1",
               HF_HUB_OFFLINE="1")
    return env


class Bench:
    """Shared settings for every measurement."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.env = _env()
        self.scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=WORK))

    def run(self, argv: Sequence[str], capture: bool = True, cwd: Path | None = None) -> Run:
        return run_once(argv, cwd=cwd or self.scratch, env=self.env,
                        timeout_s=self.args.timeout, capture=capture)

    def verdict(self, tool: Tool, path: Path) -> tuple[Verdict, str]:
        # Each file gets its own working folder: tools write reports there, in parallel.
        cwd = Path(tempfile.mkdtemp(prefix="v-", dir=self.scratch))
        result = self.run(tool.verdict_command(path, cwd), cwd=cwd)
        return tool.classify(result, cwd)

    def time_tool(self, tool: Tool, paths: Sequence[Path], reps: int) -> Timing:
        """Median-of-``reps`` wall time for scanning ``paths`` the way the tool allows: one
        run over the folder, or (fickling) a loop of one run per file."""
        if tool.takes_folders:
            return repeat(lambda: self.run(tool.command(paths), capture=False), reps,
                          slow_s=self.args.slow)

        files = sorted(p for root in paths for p in
                       ([root] if root.is_file() else root.rglob("*")) if p.is_file())

        def loop() -> Run:
            runs = [self.run(tool.command([f]), capture=False) for f in files]
            return Run(rc=max(r.rc for r in runs), wall_s=sum(r.wall_s for r in runs),
                       max_rss_mib=max(r.max_rss_mib for r in runs),
                       timed_out=any(r.timed_out for r in runs))

        return repeat(loop, reps, slow_s=self.args.slow)

    def time_api(self, paths: Sequence[Path], reps: int) -> Timing | None:
        proc = subprocess.run([sys.executable, "-c", _API_DRIVER, str(reps), *map(str, paths)],
                              capture_output=True, text=True, env=self.env, cwd=self.scratch,
                              check=False, timeout=self.args.timeout * reps)
        if proc.returncode != 0:
            log(f"bench: safehub API run failed:\n{proc.stderr[-2000:]}")
            return None
        data = json.loads(proc.stdout)
        return Timing([Run(0, t, 0.0, False) for t in data["times"]])


def _machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                       if ln.startswith("MemTotal"))
        mem = f"{mem_kib / (1 << 20):.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem = "? RAM"
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def _select(tools: list[Tool], wanted: str | None) -> list[Tool]:
    if not wanted:
        return tools
    names = {w.strip() for w in wanted.split(",")}
    return [t for t in tools if t.name == "safehub" or t.name in names]


def bench_corpus(b: Bench, tools: list[Tool]) -> str:
    corpus = find_corpus(b.args.corpus)
    if corpus is None:
        msg = ("_Corpus part skipped: no ../shared/corpus (or --corpus / $SAFEHUB_CORPUS) with "
               "a labels.json was found._")
        log("bench: " + msg.strip("_"))
        return msg
    root, samples = stage_corpus(corpus)
    log(f"bench: corpus {corpus}: {len(samples)} labelled files, staged in {root}")
    results = []
    for tool in tools:
        log(f"bench: corpus verdicts: {tool.name}")
        res = CorpusResult(tool)
        with ThreadPoolExecutor(max_workers=b.args.jobs) as pool:
            for s, v in zip(samples, pool.map(lambda s, t=tool: b.verdict(t, s.path), samples),
                            strict=True):
                res.verdicts[s.rel] = v
        results.append(res)
    for res in results:
        log(f"bench: corpus timing: {res.tool.name}")
        res.timing = b.time_tool(res.tool, [root], b.args.reps)
    log("bench: corpus timing: safehub API")
    api = b.time_api([root], b.args.reps)
    head = (f"### Shared corpus: {len(samples)} labelled files "
            f"({sum(s.label == 'malicious' for s in samples)} attacks)\n\n"
            f"One run of each tool over the whole corpus folder (median of up to {b.args.reps} "
            "runs); verdicts from one run per file. `benign-needs-policy` files should be "
            "blocked by default.\n\n")
    return head + corpus_tables(samples, results, api)


def bench_sizes(b: Bench, tools: list[Tool]) -> str:
    sizes = [s.strip() for s in b.args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"bench: unknown size(s) {unknown}; choose from {list(SIZES)}")
    checkpoints = make_checkpoints(sizes, log)
    tools = [t for t in tools if t.name != "picklescan --strict"]  # same work as picklescan
    results: dict[tuple[str, str], SizeResult] = {}
    api: dict[str, Timing] = {}
    for tool in tools:  # untimed: writes bytecode caches, loads the tool's files into memory
        b.run(tool.command([checkpoints[0].path]), capture=False)
    for ck in checkpoints:
        read_through(ck.path)
        for tool in tools:
            log(f"bench: {ck.path.name}: {tool.name}")
            timing = repeat(functools.partial(b.run, tool.command([ck.path])), b.args.reps,
                            slow_s=b.args.slow)
            verdict, reason = tool.classify(timing.last, b.scratch)
            results[(ck.path.name, tool.name)] = SizeResult(timing, verdict, reason)
        timing_api = b.time_api([ck.path], b.args.reps)
        if timing_api is not None:
            api[ck.path.name] = timing_api
    head = ("### Generated checkpoints (benign): wall time per file\n\n"
            "`torch.save` of a float32 state dict (4 MiB weight matrices plus biases) in the "
            "zip format and in the legacy format, and `pickle.dump` of the same arrays as "
            f"numpy. Median of up to {b.args.reps} runs; page cache warm.\n\n")
    return head + size_tables(checkpoints, tools, results, api)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--setup", action="store_true",
                   help="create/refresh the competitors' venvs under benchmarks/.work/venvs")
    p.add_argument("--tools", help=f"comma-separated subset of {TOOLS} (safehub always runs)")
    p.add_argument("--corpus", help="labelled corpus folder (default: ../shared/corpus)")
    p.add_argument("--no-corpus", action="store_true", help="skip the corpus part")
    p.add_argument("--no-sizes", action="store_true", help="skip the generated checkpoints")
    p.add_argument("--sizes", default=",".join(SIZES), help="default: %(default)s")
    p.add_argument("--reps", type=int, default=5, help="runs per measurement (median)")
    p.add_argument("--slow", type=float, default=60.0,
                   help="a run slower than this many seconds is not repeated")
    p.add_argument("--timeout", type=float, default=900.0, help="kill a run after this")
    p.add_argument("--jobs", type=int, default=2, help="parallel runs for the (untimed) "
                   "per-file verdicts")
    p.add_argument("--output", default=str(HERE / "results.md"))
    args = p.parse_args(argv)

    if args.setup:
        setup_venvs()
    WORK.mkdir(parents=True, exist_ok=True)
    tools, missing = available()
    tools = _select(tools, args.tools)
    for line in missing:
        log(f"bench: {line}")
    b = Bench(args)
    versions = ", ".join(f"{t.name.split()[0]} {t.version()}" for t in tools
                         if not t.name.endswith("--strict"))
    command = "make bench" if os.environ.get("MAKELEVEL") else shlex.join(
        ["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    parts = [
        "## Benchmark: safehub and the scanners a user would pick instead",
        f"Produced by `{command}` on {datetime.date.today().isoformat()}.  \n"
        f"Machine: {_machine()}.  \nVersions: {versions}."
        + ("  \nNot installed: " + "; ".join(m.split(";")[0] for m in missing) if missing
           else ""),
    ]
    try:
        if not args.no_corpus:
            parts.append(bench_corpus(b, tools))
        if not args.no_sizes:
            parts.append(bench_sizes(b, tools))
    finally:
        shutil.rmtree(b.scratch, ignore_errors=True)
    text = "\n\n".join(parts) + "\n"
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    log(f"bench: written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
