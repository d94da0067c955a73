"""Checking many files: unchanged ones from the state, the rest across processes.

Scanning is pure Python and CPU-bound, so files are spread over worker processes
(threads would share one interpreter lock). Results do not depend on the number of
workers: each file is checked the same way wherever it runs, and the caller orders
the results. Workers are forked when this process runs a single thread (cheapest),
else started by a fork server (forking a multi-threaded process can deadlock).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.context import BaseContext

from safehub._audit.executor import DaskExecutor
from safehub._audit.work import Job, Outcome, reuse, run_job

__all__ = ["default_workers", "run_jobs"]

_BATCH_BYTES = 256 << 20  # files are batched until about this much may need hashing
_BATCH_FILES = 32
# A Dask task costs more round trips than a pool's (scheduler, result fetched from the
# worker, release): larger batches, still at least 8 per worker.
_DASK_BATCH_FILES = 256


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _context() -> BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def _run_batch(jobs: Sequence[Job]) -> list[Outcome]:
    return [run_job(job) for job in jobs]


def _batches(jobs: list[Job], workers: int, most: int = _BATCH_FILES) -> Iterator[list[Job]]:
    # Small batches keep every worker busy to the end; batching at all saves a round trip
    # per file. Files that need hashing are weighed by size.
    per = max(1, min(most, len(jobs) // (workers * 8) or 1))
    batch: list[Job] = []
    weight = 0
    for job in jobs:
        batch.append(job)
        if job.need:
            with contextlib.suppress(OSError):
                weight += os.stat(job.real).st_size
        if len(batch) >= per or weight >= _BATCH_BYTES:
            yield batch
            batch, weight = [], 0
    if batch:
        yield batch


def run_jobs(jobs: list[Job], *, workers: int,
             progress: Callable[[str], None] | None = None,
             executor: DaskExecutor | None = None,
             done: Callable[[Outcome], None] | None = None) -> dict[str, Outcome]:
    """Outcomes by real path. ``progress`` is called with each path as it is done, and
    ``done`` with each outcome (the journal). ``executor``: Dask workers instead of
    this machine's processes."""
    results: dict[str, Outcome] = {}
    pending: list[Job] = []

    def report(outcome: Outcome) -> None:
        results[outcome.real] = outcome
        if done:
            done(outcome)
        if progress:
            progress(outcome.real)

    for job in jobs:
        reused = reuse(job)
        if reused is not None:
            report(reused)
        else:
            pending.append(job)
    if not pending:
        return results
    if executor is not None:
        batches = _batches(pending, executor.workers, _DASK_BATCH_FILES)
        for done_batch in executor.map_unordered(_run_batch, batches):
            for outcome in done_batch:
                report(outcome)
        return results
    if workers <= 1 or len(pending) == 1:
        for job in pending:
            report(run_job(job))
        return results
    with ProcessPoolExecutor(max_workers=min(workers, len(pending)),
                             mp_context=_context()) as pool:
        futures: set[Future[list[Outcome]]] = set()
        batches = _batches(pending, workers)
        # Keep a bounded number of batches in flight: memory stays flat for huge caches.
        for batch in batches:
            futures.add(pool.submit(_run_batch, batch))
            if len(futures) >= workers * 4:
                futures = _drain(futures, report)
        while futures:
            futures = _drain(futures, report)
    return results


def _drain(futures: set[Future[list[Outcome]]],
           report: Callable[[Outcome], None]) -> set[Future[list[Outcome]]]:
    """Report the batches that finished; the ones still running."""
    finished, rest = wait(futures, return_when=FIRST_COMPLETED)
    for future in finished:
        for outcome in future.result():
            report(outcome)
    return rest
