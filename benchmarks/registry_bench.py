"""Registry audit benchmark: a generated registry of sparse torch checkpoints, on disk and on a
local S3-compatible server (moto), audited in one process and on Dask with 1 and 2 workers.

    .venv/bin/python benchmarks/registry_bench.py               # quick: 2,000 on disk, 200 on S3
    .venv/bin/python benchmarks/registry_bench.py --full        # 100,000 on disk, 2,000 on S3
    .venv/bin/python benchmarks/registry_bench.py --disk 500 --s3 100 --mib 64

Each checkpoint is a torch zip as ``torch.save`` lays it out (``data.pkl``, ``byteorder``,
64-byte aligned ``data/<i>`` members, zip64 records) whose tensor bytes are holes, so a
registry of terabytes takes little disk. 1 in 50 carries a pickle payload (never run).
On disk, every file is opened and scanned (``audit --no-state``); on S3 every object is
read by range requests, and the requests and bytes each file took are reported. Objects on
S3 are smaller (``--s3-mib``, default 1 MiB) because moto holds what is uploaded.

Prints a markdown table (files/s, bytes and requests per file, speed-up over one process)
and the cost model for a million files on N machines (README, "Registry audits").
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sparse_checkpoint import sparse_torch_zip  # noqa: E402

WORK = HERE / ".work" / "registry"


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("true",)


def log(msg: str) -> None:
    print(f"registry-bench: {msg}", file=sys.stderr, flush=True)


def generate(folder: Path, count: int, mib: float) -> None:
    """``count`` checkpoints under ``folder/<shard>/``, reused when already there."""
    stamp = folder / f".done-{count}-{mib}"
    if stamp.exists() or not count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    evil = pickle.dumps({"w": 1, "hook": _Payload()}, protocol=2)
    started = time.perf_counter()
    for i in range(count):
        shard = folder / f"{i // 1000:03d}"
        shard.mkdir(parents=True, exist_ok=True)
        sparse_torch_zip(shard / f"model-{i:06d}.pt", gib=mib / 1024, tensors=8 + i % 24,
                         payload=evil if i % 50 == 49 else None)
        if i and i % 10000 == 0:
            log(f"generated {i} files")
    stamp.write_text("")
    log(f"generated {count} files in {time.perf_counter() - started:.1f} s")


def shards(folder: Path, count: int) -> list[str]:
    """The shard folders holding the first ``count`` files (the whole folder for all)."""
    every = sorted(p for p in folder.iterdir() if p.is_dir())
    if count >= sum(1 for _ in folder.rglob("*.pt")):
        return [str(folder)]
    return [str(p) for p in every[: -(-count // 1000)]]


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def upload(folder: Path, endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="registry")
    for path in sorted(folder.rglob("*.pt")):
        client.upload_file(str(path), "registry", f"models/{path.relative_to(folder)}")


def policy_file(endpoint: str | None) -> Path:
    path = WORK / "policy.toml"
    urls = f'"{endpoint}/"' if endpoint else ""
    loosen = '"downloads.allow_http_loopback", "downloads.allowed_urls"' if endpoint else \
        '"downloads.allow_http_loopback"'
    path.write_text('schema = 1\nname = "registry-bench"\nextends = "default"\n'
                    f'loosen = [{loosen}]\n'
                    f'[downloads]\nallow_http_loopback = true\nallowed_urls = [{urls}]\n')
    return path


def drop_cache(folder: Path) -> None:
    """Drop this registry's pages from the page cache (its files only, nothing else on
    the machine), so that every disk row starts from a cold cache."""
    started = time.perf_counter()
    for path in folder.rglob("*.pt"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # pages not yet written back are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    log(f"dropped {folder}'s pages from the page cache in {time.perf_counter() - started:.1f} s")


def _proc_io() -> tuple[int, int]:
    """(bytes asked of read calls, bytes read from storage) by this process so far."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["read_bytes"])


def read_counters(client: object | None) -> tuple[int, int]:
    """``_proc_io`` summed over the processes that read the files: this one, or the
    cluster's workers."""
    if client is None:
        return _proc_io()
    counts = client.run(_proc_io).values()  # type: ignore[attr-defined]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def measure(targets: list[str], count: int, executor: str | None,
            policy: Path, client: object | None = None) -> dict[str, float]:
    from safehub.audit import audit

    io_before = read_counters(client) if sys.platform.startswith("linux") else (0, 0)
    started = time.perf_counter()
    result = audit(targets, policy=policy, incremental=False, workers=1,
                   executor=executor)
    seconds = time.perf_counter() - started
    io_after = read_counters(client) if sys.platform.startswith("linux") else (0, 0)
    files = len(result.files)
    if files != count or result.report.unscanned:
        raise SystemExit(f"audited {files} files, expected {count}; not checked: "
                         f"{[(u.path, u.error) for u in result.report.unscanned[:3]]}")
    unsafe = len(result.unsafe)
    costs = list(result.remote.values())
    log(f"{files} files ({unsafe} unsafe) in {seconds:.1f} s: {files / seconds:.1f} files/s; "
        f"load average {os.getloadavg()[0]:.1f}")
    return {"files": files, "unsafe": unsafe, "seconds": seconds,
            "rate": files / seconds, "load": os.getloadavg()[0],
            "read": (io_after[0] - io_before[0]) / files,
            "disk": (io_after[1] - io_before[1]) / files,
            "requests": sum(r for r, _ in costs) / len(costs) if costs else 0.0,
            "bytes": sum(b for _, b in costs) / len(costs) if costs else 0.0}


def cluster(workers: int) -> tuple[object, str]:
    import distributed

    local = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address=":0",
                                     silence_logs=50)
    return local, local.scheduler_address


def main() -> int:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="100,000 on disk, 2,000 on S3")
    parser.add_argument("--disk", type=int, help="checkpoints on disk (default 2,000)")
    parser.add_argument("--s3", type=int, help="checkpoints on S3 (default 200)")
    parser.add_argument("--dask-disk", type=int,
                        help="checkpoints on disk for the Dask rows (default: all; a multiple "
                             "of 1,000 reads whole shards, to cap the run's length)")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "registry",
                        help="where the generated registry and state live")
    parser.add_argument("--mib", type=float, default=256.0,
                        help="apparent size of each checkpoint on disk (MiB)")
    parser.add_argument("--s3-mib", type=float, default=1.0,
                        help="size of each checkpoint on S3 (MiB)")
    parser.add_argument("--cold", action="store_true",
                        help="drop the registry's pages from the page cache before each disk "
                             "row (posix_fadvise DONTNEED on its files only)")
    args = parser.parse_args()
    WORK = args.work
    n_disk = args.disk if args.disk is not None else (100_000 if args.full else 2_000)
    n_s3 = args.s3 if args.s3 is not None else (2_000 if args.full else 200)
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_STATE_HOME", str(WORK / "state"))
    os.environ["SAFEHUB_NO_PROGRESS"] = "1"

    disk = WORK / "disk"
    generate(disk, n_disk, args.mib)
    rows: list[tuple[str, str, dict[str, float]]] = []
    proc, endpoint = start_moto() if n_s3 else (None, "")
    # Workers read S3 credentials from their own environment, as any AWS client does.
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    clusters = {k: cluster(k) for k in (1, 2)}
    import distributed

    clients = {address: distributed.Client(local) for local, address in clusters.values()}  # type: ignore[no-untyped-call]
    try:
        pol = policy_file(None)
        for name, executor in (("1 process", None), ("Dask, 1 worker", clusters[1][1]),
                               ("Dask, 2 workers", clusters[2][1])):
            if not n_disk:
                break
            count = n_disk if executor is None else min(n_disk, args.dask_disk or n_disk)
            if args.cold:
                drop_cache(disk)
            log(f"disk: {name}, {count} files")
            client = None if executor is None else clients[executor]
            rows.append(("disk", name, measure(shards(disk, count), count, executor, pol,
                                               client)))
        if n_s3:
            s3_files = WORK / "s3"
            generate(s3_files, n_s3, args.s3_mib)
            log(f"uploading {n_s3} objects to moto")
            upload(s3_files, endpoint)
            pol = policy_file(endpoint)
            for name, executor in (("1 process (8 threads)", None),
                                   ("Dask, 1 worker", clusters[1][1]),
                                   ("Dask, 2 workers", clusters[2][1])):
                log(f"s3: {name}")
                rows.append(("s3", name, measure(["s3://registry/models/"], n_s3, executor, pol)))
    finally:
        for client in clients.values():
            client.close()  # type: ignore[no-untyped-call]
        for local, _ in clusters.values():
            local.close()  # type: ignore[attr-defined]
        if proc is not None:
            proc.terminate()
            proc.wait()

    print(f"Registry: {n_disk} checkpoints of {args.mib:g} MiB (sparse) on disk, {n_s3} of "
          f"{args.s3_mib:g} MiB on moto S3; {os.cpu_count()} CPUs"
          f"{'; each disk row from a cold page cache' if args.cold else ''}.\n")
    print("On disk, bytes/file is what read calls returned (rchar), and in brackets what "
          "came from storage (read_bytes), summed over the reading processes.\n")
    print("| where | how | files | unsafe | s | files/s | vs 1 process | load avg "
          "| requests/file | bytes/file |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base: dict[str, float] = {}  # files/s are compared, so row sizes may differ
    for where, name, m in rows:
        base.setdefault(where, m["rate"])
        got = (f"{m['requests']:.1f} | {m['bytes']:,.0f}" if where == "s3" else
               f"- | {m['read']:,.0f} ({m['disk']:,.0f})")
        print(f"| {where} | {name} | {m['files']:.0f} | {m['unsafe']:.0f} | "
              f"{m['seconds']:.1f} | {m['rate']:.0f} | {m['rate'] / base[where]:.2f}x | "
              f"{m['load']:.1f} | {got} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
