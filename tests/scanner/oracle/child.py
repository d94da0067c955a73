"""The oracle's child process: the loaders' own parsers on untrusted bytes, every capability
replaced by an inert stub.

Run as ``python -m tests.scanner.oracle.child``: reads batches, each a pickled list of
``(reader, bytes)`` from stdin (written by the parent, trusted), and writes one JSON line
per input:
``{"records": [{"names": [...], "ok": bool, "end": int|None, "error": str}, ...]}``.
Each record is one unpickler run, in the order the loader runs them. A name is the
``(module, name)`` pair ``find_class`` received, before any rename: every global the real
parser resolves. Nothing the bytes name is imported or called: ``find_class`` returns
``Stub``, a class that accepts any arguments and does nothing, so REDUCE, NEWOBJ, BUILD,
SETITEM and APPEND proceed as far as the parser itself allows.

The child runs under rlimits set by the parent (address space) and itself (CPU seconds
per input); the parent starts a new one when an input kills it.
"""

from __future__ import annotations

import copyreg
import io
import json
import os
import pickle
import resource
import struct
import sys
import tarfile
from typing import Any

# EXT1/EXT2/EXT4 resolve through copyreg's registry, whose contents belong to the loading
# process: register every short code (and the long ones the generator uses) to a marker
# name so the parser goes on and the name is recorded.
EXT_CODES = [*range(1, 1 << 16), 1 << 16, (1 << 31) - 1]
for _code in EXT_CODES:
    copyreg._extension_registry[_code] = ("__ext__", str(_code))  # type: ignore[attr-defined]


class Stub:
    """Whatever the pickle asked for: accepts any arguments, does nothing."""

    def __new__(cls, *args: object, **kwargs: object) -> Stub:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> Stub:
        return Stub()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass

    def add(self, item: object) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.names: list[list[str]] = []

    def start(self) -> None:
        self.names = []
        self.records.append({"names": self.names, "ok": False, "end": None, "error": ""})

    def finish(self, end: int | None) -> None:
        self.records[-1].update(ok=True, end=end)

    def where(self, label: str) -> None:
        """Which file of the loader the current record is read from."""
        self.records[-1]["where"] = label

    def fail(self, exc: BaseException) -> None:
        if self.records:
            self.records[-1]["error"] = f"{type(exc).__name__}: {exc}"[:200]


REC = Recorder()

# Names joblib's reader must see as the real thing to take its array path; constructing
# them reaches no code (a dtype, joblib's own record of an array's shape).
_PASS_THROUGH: dict[tuple[str, str], Any] = {}


def _find(module: str, name: str) -> Any:
    REC.names.append([module, name])
    return _PASS_THROUGH.get((module, name), Stub)


def _persistent(pid: object) -> Any:
    REC.names.append(["<persistent_load>", ""])
    return Stub()


class CUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _find(module, name)

    def persistent_load(self, pid: object) -> Any:
        return _persistent(pid)


class PyUnpickler(pickle._Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _find(module, name)

    def persistent_load(self, pid: object) -> Any:
        return _persistent(pid)


class PeekAll(io.RawIOBase):
    """A file whose ``peek`` returns everything left: _pickle.c then buffers the whole
    input and reads it exactly as ``pickle.loads`` reads bytes."""

    def __init__(self, data: bytes):
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else self._pos + n
        out = self._data[self._pos : end]
        self._pos += len(out)
        return out

    def readline(self, limit: int | None = -1) -> bytes:
        nl = self._data.find(b"\n", self._pos)
        end = len(self._data) if nl < 0 else nl + 1
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def peek(self, n: int = 0) -> bytes:
        return self._data[self._pos :]

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True


def _one(make: Any, fh: Any) -> None:
    REC.start()
    make(fh).load()
    REC.finish(fh.tell())


def read_pickle(reader: str, data: bytes) -> None:
    if reader == "c_file":
        _one(CUnpickler, io.BytesIO(data))
    elif reader == "c_bytes":
        _one(CUnpickler, PeekAll(data))
    elif reader == "py":
        _one(PyUnpickler, io.BytesIO(data))
    elif reader == "c_file_all":
        # Every stream in turn from one file object, as torch's legacy loader and readers
        # that read on do: where one load() leaves the file is where the next one starts.
        fh = io.BytesIO(data)
        for _ in range(16):
            if fh.tell() >= len(data):
                break
            _one(CUnpickler, fh)
    elif reader == "torch_zip":
        import torch.serialization as ts

        # As torch.serialization._load: the record's bytes in an io.BytesIO, read by the
        # C unpickler (torch's UnpicklerWrapper subclasses it).
        with ts._open_zipfile_reader(io.BytesIO(data)) as zf:
            record = zf.get_record("data.pkl")
        _one(CUnpickler, io.BytesIO(record))
    elif reader == "numpy":
        import numpy as np

        # numpy.load(allow_pickle=True) calls pickle.load(fp) for object arrays.
        def load(fp: Any, **kwargs: Any) -> Any:
            REC.start()
            value = CUnpickler(fp, **kwargs).load()
            REC.finish(None)
            return value

        pickle.load = load  # type: ignore[assignment]
        loaded = np.load(io.BytesIO(data), allow_pickle=True)
        if hasattr(loaded, "files"):
            for key in loaded.files:
                loaded[key]
    elif reader == "joblib":
        import joblib  # type: ignore[import-untyped]
        import joblib.numpy_pickle as jnp  # type: ignore[import-untyped]
        import numpy as np

        _PASS_THROUGH.update({("joblib.numpy_pickle", "NumpyArrayWrapper"):
                              jnp.NumpyArrayWrapper, ("numpy", "dtype"): np.dtype})
        jnp.NumpyUnpickler.find_class = PyUnpickler.find_class
        jnp.NumpyUnpickler.persistent_load = PyUnpickler.persistent_load
        pickle.load = lambda fp, **kw: _load_nested(fp, kw)
        REC.start()
        joblib.load(io.BytesIO(data))
        REC.finish(None)
    elif reader == "torch_legacy":
        _torch_load(data)
    else:
        raise ValueError(f"unknown reader {reader}")


class LegacyUnpickler(pickle.Unpickler):
    """The C unpickler torch's legacy reader gets as ``pickle_module.Unpickler``.

    Only ``find_class`` and ``load`` are overridden: torch assigns ``persistent_load`` on
    the instance (its UnpicklerWrapper), and a class attribute here would shadow that.
    torch's own storage classes pass through (what ``pickle.load`` of a legacy
    ``storages`` record returns, and what torch then asks for ``_dtype``); every other
    name is a stub.
    """

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._file = file

    def find_class(self, module: str, name: str) -> Any:
        REC.names.append([module, name])
        return _torch_storage(module, name) or Stub

    def load(self) -> Any:
        REC.start()
        label = getattr(self._file, "name", "")
        # tar.extractfile's file object carries the archive's name: it is the member "pickle".
        tar_member = isinstance(self._file, tarfile.ExFileObject)
        REC.where("pickle" if tar_member or not isinstance(label, str)
                  else os.path.basename(label))
        value = super().load()
        REC.finish(self._file.tell())
        return value


def _torch_storage(module: str, name: str) -> Any:
    if module != "torch" or not name.endswith("Storage"):
        return None
    import torch

    found = getattr(torch, name, None)
    return found if isinstance(found, type) and issubclass(
        found, torch.storage._LegacyStorage) else None


def _legacy_module() -> Any:
    import types

    module = types.ModuleType("legacy_stub_pickle")
    module.Unpickler = LegacyUnpickler  # type: ignore[attr-defined]
    module.load = lambda fh, **kw: LegacyUnpickler(fh, **kw).load()  # type: ignore[attr-defined]
    return module


def _torch_load(data: bytes) -> None:
    """``torch.load(path, weights_only=False)`` itself, as a user calls it on a file: the zip
    check, then the legacy tar path (tarfile members ``storages``, ``tensors``, ``pickle``,
    extracted to a temporary folder), and when tarfile fails the raw stream (magic number,
    protocol, system info, the object, storage keys), each a ``pickle_module.load`` call
    or torch's UnpicklerWrapper. Capabilities: ``map_location`` keeps every storage on the
    CPU, torch's container-source check (which reads source files and can write a patch
    file) is stubbed, and the storage names torch's UnpicklerWrapper resolves itself
    (``StorageType``) are recorded as ``<storage>.NAME``."""
    import tempfile

    import torch
    import torch.serialization as ts

    if not getattr(ts, "_oracle_stubbed", False):
        real_storage_type = ts.StorageType

        def storage_type(name: str) -> Any:
            REC.names.append(["<storage>", name])
            return real_storage_type(name)

        def no_source(obj: object) -> Any:
            raise OSError("stubbed by the oracle")

        ts.StorageType = storage_type  # type: ignore[misc,assignment]
        ts.get_source_lines_and_file = no_source  # type: ignore[assignment]
        ts._oracle_stubbed = True  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.pt")
        with open(path, "wb") as fh:
            fh.write(data)
        torch.load(path, map_location=lambda storage, location: storage,
                   pickle_module=_legacy_module(), weights_only=False)


def _load_nested(fp: Any, kwargs: dict[str, Any]) -> Any:
    # joblib reads object arrays with pickle.load on the same file: their names are
    # recorded with the outer record's.
    return CUnpickler(fp, **kwargs).load()


CPU_PER_INPUT = 20  # seconds; past it the kernel ends the child (SIGXCPU)


def _cpu_budget() -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = spent + CPU_PER_INPUT
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main() -> None:
    """Serve batches: a 4-byte length and a pickled list in, one JSON line per input out."""
    inp = sys.stdin.buffer
    out = sys.stdout
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        items: list[tuple[str, bytes]] = pickle.loads(inp.read(struct.unpack("<I", head)[0]))
        for reader, data in items:
            REC.records = []
            _cpu_budget()
            try:
                read_pickle(reader, data)
            except RecursionError as exc:
                REC.fail(exc)
            except Exception as exc:  # the parser stopped: what it resolved before counts
                REC.fail(exc)
            out.write(json.dumps({"records": REC.records}) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
