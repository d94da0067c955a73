"""``audit --executor dask-local | dask://HOST:PORT``: files checked on Dask worker processes
(a real ``distributed.LocalCluster``), results streamed to a JSON-lines journal that a rerun
resumes from, and a merged report equal to the single-process one on the same tree."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from safehub.audit import audit
from tests.audit._caches import Caches, clean_checkpoint
from tests.conftest import CliResult

pytest.importorskip("distributed", reason="the Dask executor needs the dask extra")
pytestmark = pytest.mark.slow  # starts worker processes

Cli = Callable[..., CliResult]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A small real cluster: 2 worker processes, one thread each, on 127.0.0.1."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0",
                                  silence_logs=50) as local:
        yield local.scheduler_address


def _comparable(report_json: str) -> dict[str, Any]:
    data = json.loads(report_json)
    data["audit"].pop("stats")
    data["audit"].pop("state")
    data.pop("summary", None)
    data.pop("duration", None)
    return data


def test_dask_report_equals_single_process(cli: Cli, caches: Caches, cluster: str) -> None:
    args = ("audit", caches.hub, caches.hf, "--no-state", "--policy", caches.policy,
            "--lockfile", caches.lockfile, "-f", "json")
    single = cli(*args, "-j", "1")
    assert single.code == 1, single.err  # the caches hold unsafe and tampered files
    address = cluster.replace("tcp://", "dask://")
    on_dask = cli(*args, "--executor", address)
    assert on_dask.code == single.code, on_dask.err
    assert _comparable(on_dask.out) == _comparable(single.out)


def test_journal_streams_and_a_rerun_resumes(tmp_path: Path, caches: Caches,
                                             cluster: str) -> None:
    folder = tmp_path / "registry"
    folder.mkdir()
    for i in range(24):
        (folder / f"m{i:02d}.pt").write_bytes(clean_checkpoint(i))
    journal = tmp_path / "results.jsonl"
    first = audit([folder], incremental=False, executor=cluster, journal=journal)
    lines = journal.read_text().splitlines()
    assert len(lines) == 24 and all(json.loads(line)["kind"] == "file" for line in lines)
    # Killed part-way: half the lines, the last one torn.
    journal.write_text("\n".join(lines[:12]) + "\n" + lines[12][:40])
    (folder / "m00.pt").write_bytes(clean_checkpoint(99))  # changed since: checked again
    second = audit([folder], incremental=False, executor=cluster, journal=journal)
    assert second.stats.reused == 11 and second.stats.scanned == 13
    expected = audit([folder], incremental=False, workers=1)
    assert second.report == expected.report
    assert first.report.files[1:] == expected.report.files[1:]


def test_dask_local_cluster_from_the_api(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.pt").write_bytes(clean_checkpoint(i))
    local = audit([folder], incremental=False, executor="dask-local", workers=2)
    assert local.report == audit([folder], incremental=False, workers=1).report
    assert local.stats.workers == 2


@pytest.mark.parametrize("spec", ["dask://nohost", "dask://h:99999", "spark://x:1"])
def test_bad_executor_is_a_one_line_error_before_any_work(cli: Cli, tmp_path: Path,
                                                          spec: str) -> None:
    state = tmp_path / "state.json"
    result = cli("audit", tmp_path, "--state", state, "--executor", spec)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and "--executor" in result.err
    assert not state.exists()


def test_a_large_audit_goes_to_dask_in_few_large_batches(tmp_path: Path, cluster: str) -> None:
    """Each Dask task costs round trips a process pool does not pay (scheduler, the
    result fetched from the worker, its release): 1,200 files on 2 workers go in 16
    batches of 75 (at least 8 per worker), not 38 of 32; the report is the same."""
    import distributed

    folder = tmp_path / "registry"
    data = clean_checkpoint(0)
    for i in range(1200):
        shard = folder / f"{i // 100:02d}"
        shard.mkdir(parents=True, exist_ok=True)
        (shard / f"m{i:04d}.pt").write_bytes(data)
    with distributed.Client(cluster) as client, distributed.get_task_stream(client) as tasks:
        on_dask = audit([folder], incremental=False, executor=cluster)
    batches = [t for t in tasks.data if "_run_batch" in t["key"]]
    assert len(batches) == 16, len(batches)
    assert on_dask.report == audit([folder], incremental=False, workers=1).report
    assert len(on_dask.report.files) == 1200 and not on_dask.unsafe
