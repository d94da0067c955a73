"""Where an audit's files are checked: this machine's processes, or a Dask cluster.

``--executor dask://HOST:PORT`` sends batches of files to the workers of a running
``distributed`` scheduler (every worker needs safehub installed and must see the same
paths: a shared file system, or remote URLs); ``--executor dask-local`` starts a
``distributed.LocalCluster`` of worker processes on this machine. Results come back as
each batch finishes, in any order; the audit orders them, so the report does not depend
on where or in which order files were checked. A bounded number of batches is in flight,
so memory stays flat for a million files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from safehub.errors import SafehubError

__all__ = ["DaskExecutor", "parse_executor"]

T = TypeVar("T")
R = TypeVar("R")


def parse_executor(spec: str | None) -> str | None:
    """``None``, ``dask-local`` or ``tcp://HOST:PORT`` (from ``dask://HOST:PORT``), checked
    before any work. Raises :class:`SafehubError` for anything else."""
    if spec is None or spec == "local":
        return None
    if spec == "dask-local":
        return spec
    if spec.startswith(("dask://", "tcp://", "tls://")):
        address = spec.split("://", 1)[1]
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SafehubError("a Dask scheduler address is dask://HOST:PORT", subject=spec,
                               fix="give the scheduler's address, e.g. dask://10.0.0.5:8786")
        scheme = "tls" if spec.startswith("tls://") else "tcp"
        return f"{scheme}://{address}"
    raise SafehubError("unknown executor", subject=spec,
                       fix="use local, dask-local or dask://HOST:PORT")


class DaskExecutor:
    """Runs batches on Dask workers. ``address``: ``dask-local`` or a scheduler address;
    ``workers``: the size of a local cluster."""

    def __init__(self, address: str, *, workers: int = 2) -> None:
        try:
            import distributed
        except ImportError as exc:
            raise SafehubError("a Dask executor needs the dask extra", subject=address,
                               fix="pip install 'safehub[dask]'") from exc
        self._cluster: Any = None
        try:
            if address == "dask-local":
                self._cluster = distributed.LocalCluster(
                    n_workers=max(1, workers), threads_per_worker=1, processes=True,
                    dashboard_address=":0", host="127.0.0.1", silence_logs=50)
                self.client = distributed.Client(self._cluster)
            else:
                self.client = distributed.Client(address, timeout="30s")
        except (OSError, TimeoutError) as exc:
            self.close()
            raise SafehubError(f"cannot reach the Dask scheduler: {exc}",
                               subject=address) from exc
        self.address = address

    @property
    def workers(self) -> int:
        """Worker processes the scheduler has now."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def map_unordered(self, fn: Callable[[T], R], batches: Iterable[T]) -> Iterator[R]:
        """``fn(batch)`` for every batch, on the workers, yielded as each finishes."""
        from distributed import as_completed

        in_flight = max(2, self.workers * 4)
        it = iter(batches)
        pending = as_completed()
        for count, batch in enumerate(it, 1):
            pending.add(self.client.submit(fn, batch, pure=False))
            if count >= in_flight:
                break
        for future in pending:
            result = future.result()
            future.release()
            nxt = next(it, None)
            if nxt is not None:
                pending.add(self.client.submit(fn, nxt, pure=False))
            yield result

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
