"""Sparse tensors: torch builds them from the file's indices unchecked (SH108).

``torch._utils._rebuild_sparse_tensor`` is what ``torch.save`` writes for every sparse
tensor, and torch's weights-only loader allows it. It builds the tensor with
``check_invariants=False``, and ``torch.load`` checks the indices afterwards only under
``torch.sparse.check_sparse_tensor_invariants``, which is off by default: a checkpoint whose
compressed indices run past its values loads, and its first ``to_dense()`` reads and writes
memory outside the tensor. In a torch zip checkpoint the scan reads the index records and
applies torch's own validation (test_sparse_differential.py checks it against torch's);
anything it cannot resolve exactly is refused, as is every other way of reaching the
rebuild function.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import signal
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner.conftest import rules, scan_one

torch = pytest.importorskip("torch")


def _bad_csr() -> object:
    """A 2x2 CSR tensor whose row pointers say 10**8 values where there is one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR support is in beta
        return torch.sparse_csr_tensor(torch.tensor([0, 10**8, 10**8]), torch.tensor([0]),
                                       torch.tensor([1.0]), (2, 2), check_invariants=False)


def test_sparse_tensor_with_bad_indices_crashes_its_loader_and_is_refused(
        tmp_path: Path) -> None:
    path = tmp_path / "sparse.pt"
    torch.save({"w": _bad_csr()}, path)
    # torch.load's defaults (weights_only=True) load it; its first use reads out of bounds
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1])['w']; print('loaded', flush=True); w.to_dense()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded"), run
    assert run.returncode == -signal.SIGSEGV, run
    report = scan_one(path)  # was CLEAN: every global in it is allowed
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


_LAYOUTS = {
    "coo": lambda d: d.to_sparse(), "coo-coalesced": lambda d: d.to_sparse().coalesce(),
    "csr": lambda d: d.to_sparse_csr(), "csc": lambda d: d.to_sparse_csc(),
    "bsr": lambda d: d.to_sparse_bsr((2, 2)), "bsc": lambda d: d.to_sparse_bsc((2, 1)),
    "csr-int32": lambda d: torch.sparse_csr_tensor(
        d.to_sparse_csr().crow_indices().int(), d.to_sparse_csr().col_indices().int(),
        d.to_sparse_csr().values(), d.shape),
    "empty": lambda d: torch.zeros_like(d).to_sparse_csr(),
}


@pytest.mark.parametrize("layout", sorted(_LAYOUTS))
def test_real_sparse_checkpoints_scan_clean(layout: str, tmp_path: Path) -> None:
    # torch.save's own sparse tensors, their index data read and found valid
    dense = torch.eye(4) + torch.diag(torch.ones(3), 1)
    path = tmp_path / f"{layout}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse compressed support is in beta
        # containers filled by SETITEMS sit beside it (writes into them are not writes
        # into tensor data)
        torch.save({"s": _LAYOUTS[layout](dense), "d": dense,
                    "counts": collections.defaultdict(int, {"steps": 3}),
                    "state": collections.OrderedDict(w=dense)}, path)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN and "SH108" not in rules(report), report.findings


def _with_data_pkl(src: Path, dst: Path, edit: Callable[[bytes], bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            body = zin.read(info)
            zout.writestr(info, edit(body) if info.filename.endswith("/data.pkl") else body)


def _write_after(target: str) -> Callable[[bytes], bytes]:
    """SETITEM of index 10**8 into the first tensor of the pickle (its indices), or into
    the storage under it: ``t[0, 0] = 10**8`` / ``storage[0] = 10**8``."""
    def edit(data: bytes) -> bytes:
        ops = list(pickletools.genops(data))
        first = next(i for i, (op, arg, _) in enumerate(ops)
                     if op.name == "GLOBAL" and arg == "torch._utils _rebuild_tensor_v2")
        if target == "tensor":
            at = [pos for op, _, pos in ops[first:] if op.name == "REDUCE"][1] + 1
            key = b"K\x00K\x00\x86"
        else:
            at = next(pos for op, _, pos in ops[first:] if op.name == "BINPERSID") + 1
            key = b"K\x00"
        return data[:at] + key + b"J\x00\xe1\xf5\x05s" + data[at:]
    return edit


@pytest.mark.parametrize("target", ["tensor", "storage"])
def test_a_write_into_valid_index_data_is_refused(target: str, tmp_path: Path) -> None:
    # The index record is valid; the pickle then writes an index of 10**8 into the loaded
    # index tensor (or its storage) with SETITEM, which torch.load(weights_only=False)
    # runs: the checked bytes are not what the sparse tensor gets.
    valid = tmp_path / "valid.pt"
    torch.save({"w": torch.eye(2).to_sparse()}, valid)
    path = tmp_path / "written.pt"
    _with_data_pkl(valid, path, _write_after(target))
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1], weights_only=False)['w']; print('loaded', flush=True);"
            " w.to_dense()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded") and run.returncode == -signal.SIGSEGV, run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
    assert "writes into" in report.findings[0].message


def test_index_data_read_otherwise_by_torch_fails_closed(tmp_path: Path) -> None:
    # A compressed index record: torch.load reads it inflated, torch.load(mmap=True) maps
    # its raw bytes. torch.save never compresses records; the scan does not vouch for it.
    valid = tmp_path / "valid.pt"
    torch.save({"w": torch.eye(3).to_sparse()}, valid)
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(valid) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            deflate = info.filename.endswith("/data/0")
            zout.writestr(info.filename, zin.read(info),
                          zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
    assert torch.load(path)["w"].to_dense().equal(torch.eye(3))
    report = scan_one(path)
    assert rules(report) == {"SH108"} and "compressed" in report.findings[0].message


def test_sparse_tensors_in_the_legacy_format_are_not_vouched_for(tmp_path: Path) -> None:
    # Only torch zip checkpoints have their index records read; the legacy format (and
    # plain pickles, tar, TorchScript) keep the blanket refusal.
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.eye(3).to_sparse()}, path, _use_new_zipfile_serialization=False)
    assert rules(scan_one(path)) == {"SH108"}


class _Reduce:
    def __init__(self, func: object, args: tuple[object, ...]):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def test_the_rebuild_function_is_refused_however_it_is_reached(tmp_path: Path) -> None:
    # Given to torch's own BUILD as its rebuild function, not called by REDUCE itself.
    rebuild = torch._utils._rebuild_sparse_tensor
    indirect = _Reduce(torch._tensor._rebuild_from_type_v2,
                       (rebuild, torch.Tensor, (torch.sparse_coo, ()), {}))
    path = tmp_path / "indirect.pkl"
    path.write_bytes(pickle.dumps({"w": indirect}, protocol=2))
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


def test_legacy_sparse_constructor_is_refused_under_the_permissive_policy(
        tmp_path: Path) -> None:
    # torch.sparse.FloatTensor(indices, values, size) (allowed, and in torch's weights-only
    # set) builds the same unchecked tensor; its only finding was SH177 (medium: its
    # arguments are tensors), which the permissive policy lets through.
    built = _Reduce(torch.sparse.FloatTensor, (
        _Reduce(torch.LongTensor, ([[0, 10**8], [0, 10**8]],)),
        _Reduce(torch.FloatTensor, ([1.0, 2.0],)), (4, 4)))
    path = tmp_path / "legacy.pkl"
    path.write_bytes(pickle.dumps({"w": built}, protocol=2))
    code = ("import pickle, sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = pickle.load(open(sys.argv[1], 'rb'))['w']; print('loaded', flush=True); "
            "w.coalesce().to_dense()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded") and run.returncode == -signal.SIGSEGV, run
    report = scan_one(path, ScanOptions(block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)


def test_a_zero_stride_index_view_does_not_expand_in_the_scanner(tmp_path: Path) -> None:
    # indices of shape (2, 10**10) with strides (0, 0) over two stored values: 16 bytes to
    # read, 160 GB once expanded. The expansion counts against the limit on index data.
    valid = tmp_path / "valid.pt"
    torch.save({"w": torch.eye(2).to_sparse()}, valid)
    path = tmp_path / "expanded.pt"
    view = b"K\x00K\x02K\x02\x86q\x0dK\x02K\x01\x86"
    huge = b"K\x00K\x02\x8a\x05\x00\xe4\x0bT\x02\x86q\x0dK\x00K\x00\x86"

    def edit(data: bytes) -> bytes:
        assert data.count(view) == 1
        return data.replace(view, huge)

    _with_data_pkl(valid, path, edit)
    report = scan_one(path)
    assert rules(report) == {"SH108"} and "limit" in report.findings[0].message


def _shrink_values(data: bytes) -> bytes:
    """After the whole state dict is built, BUILD on the CSR's values tensor (its memo)
    with the legacy state (storage, 0, (1,), (1,)): torch's weights-only loader calls
    ``values.set_(*state)``, and the CSR tensor holds that very tensor. Stored under a new
    key, so the pickle needs no POP (which the weights-only loader lacks)."""
    ops = list(pickletools.genops(data))
    memos = [ops[i + 1][1] for i, (op, _, _) in enumerate(ops)
             if op.name == "REDUCE" and ops[i - 2][0].name == "TUPLE"
             and ops[i + 1][0].name == "BINPUT"]
    storage = (b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x002"
               b"X\x03\x00\x00\x00cpuK\x09tQ")
    state = b"(" + storage + b"K\x00K\x01\x85K\x01\x85t"
    at = data.rindex(b".")
    return (data[:at] + b"X\x04\x00\x00\x00junkh" + bytes([memos[2]]) + state + b"bs"
            + data[at:])


def test_a_build_shrinking_the_values_after_the_rebuild_is_refused(tmp_path: Path) -> None:
    # Index records and values are valid when read; BUILD then shrinks the values tensor
    # the CSR tensor holds to one element under row pointers that say three. The default
    # torch.load (weights_only=True) runs it, and to_dense() reads past the values.
    valid = tmp_path / "valid.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"w": torch.eye(3).to_sparse_csr()}, valid)
    path = tmp_path / "shrunk.pt"
    _with_data_pkl(valid, path, _shrink_values)
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1])['w']; print('loaded', tuple(w.values().shape), "
            "flush=True); (w @ torch.ones(3, 10**6)).sum(); print(w.to_dense())")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded (1,)") and run.returncode == -signal.SIGSEGV, run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
    assert "BUILD" in report.findings[0].message


class _Pid:
    """An object pickled as the persistent id ``pid``."""

    def __init__(self, pid: tuple[object, ...]):
        self.pid = pid


class _PidPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        return obj.pid if isinstance(obj, _Pid) else None


def _view(pid: tuple[object, ...], offset: int, length: int) -> _Reduce:
    return _Reduce(torch._utils._rebuild_tensor_v2, (_Pid(pid), offset, (length,), (1,),
                                                     False, collections.OrderedDict()))


def _csr_over(first: Callable[[str, int], tuple[object, ...]], protocol: int = 2) -> bytes:
    """A 2x2 CSR tensor whose index tensors name LongStorage records '0' and '1' holding
    valid int64 indices ([0, 1, 2] and [0, 1]) at element offsets 3 and 2, after a
    ``first(key, nbytes)`` reference to each record. Read with another element type, the
    same offsets point at bytes [0, 2, 2] and [0, 255]: two columns in row 0, one of them
    255."""
    def long(key: str, numel: int) -> tuple[object, ...]:
        return ("storage", torch.LongStorage, key, "cpu", numel)

    layout = _Reduce(torch.serialization._get_layout, ("torch.sparse_csr",))
    sparse = _Reduce(torch._utils._rebuild_sparse_tensor, (layout, (
        _view(long("0", 6), 3, 3), _view(long("1", 4), 2, 2),
        _view(("storage", torch.FloatStorage, "2", "cpu", 2), 0, 2), (2, 2))))
    buf = io.BytesIO()
    _PidPickler(buf, protocol=protocol).dump({"a": _Pid(first("0", 48)), "b": _Pid(first("1", 32)),
                                       "w": sparse})
    return buf.getvalue()


def _write_archive(path: Path, data_pkl: bytes) -> None:
    records = {"data.pkl": data_pkl, "byteorder": b"little", "version": b"3\n",
               "data/0": bytes([7, 7, 7, 0, 2, 2]) + bytes(18) + struct.pack("<3q", 0, 1, 2),
               "data/1": bytes([9, 9, 0, 255]) + bytes(12) + struct.pack("<2q", 0, 1),
               "data/2": struct.pack("<2f", 1.0, 2.0)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, body in records.items():
            z.writestr(f"archive/{name}", body)


def test_index_storage_loaded_first_with_another_type_is_refused(tmp_path: Path) -> None:
    # torch's persistent_load keeps the type of a key's first reference: an untyped
    # storage (torch.storage.UntypedStorage, allowed by weights_only) loads records '0'
    # and '1' as bytes, and the LongStorage views over them are uint8 index tensors,
    # which the sparse constructor takes. The scan read the indices as the int64 the
    # views name (valid) and passed the file: torch.load's default crashed on first use.
    path = tmp_path / "untyped-first.pt"
    _write_archive(path, _csr_over(
        lambda key, nbytes: ("storage", torch.UntypedStorage, key, "cpu", nbytes)))
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1])['w']; print('loaded', w.col_indices().tolist(), "
            "flush=True); (w @ torch.ones(2, 10**6)).sum()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded [0, 255]") and run.returncode == -signal.SIGSEGV, run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
    assert "Untyped" in report.findings[0].message


def test_index_storage_first_referenced_in_a_form_not_read_is_refused(
        tmp_path: Path) -> None:
    # b'storage' (protocol 3 BINBYTES) is 'storage' to torch.load(weights_only=False):
    # an IntStorage reference so spelled loads the records as int32, and the scan, which
    # did not read that reference, took the LongStorage views for int64 (valid).
    path = tmp_path / "bytes-first.pt"
    data = _csr_over(lambda key, nbytes: (b"storage", torch.IntStorage, key, "cpu",
                                          nbytes // 4), protocol=3)
    _write_archive(path, data)
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1], weights_only=False)['w']; "
            "print('loaded', w.col_indices().dtype, flush=True)")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded torch.int32"), run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
    assert rules(report) == {"SH108"} and "not read here" in report.findings[0].message


def test_an_untyped_storage_beside_a_sparse_tensor_scans_clean(tmp_path: Path) -> None:
    path = tmp_path / "beside.pt"
    torch.save({"u": torch.UntypedStorage(8), "w": torch.eye(3).to_sparse()}, path)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, report.findings


def _long(key: str, numel: int) -> tuple[object, ...]:
    return ("storage", torch.LongStorage, key, "cpu", numel)


_STATE_WRITERS: dict[str, Callable[[object, object], _Reduce]] = {
    "from_type": lambda tensor_args, state: _Reduce(torch._tensor._rebuild_from_type_v2, (
        torch._utils._rebuild_tensor_v2, torch.Tensor, tensor_args, state)),
    "parameter": lambda tensor_args, state: _Reduce(
        torch._utils._rebuild_parameter_with_state, (
            _Reduce(torch._utils._rebuild_tensor_v2, tensor_args), False,
            collections.OrderedDict(), state)),
}


@pytest.mark.parametrize("writer", sorted(_STATE_WRITERS))
def test_a_state_setting_real_on_a_tensor_over_the_indices_is_refused(
        writer: str, tmp_path: Path) -> None:
    # Valid CSR index records; another tensor over the column indices' storage is rebuilt
    # with the state {'real': [0, 10**8]}: torch's _set_obj_state does setattr, and
    # Tensor.real's setter copies into the storage the CSR tensor's indices share. Every
    # global is allowed and the pickle has no SETITEM or BUILD; the scan passed it, and
    # torch.load's default crashed on the first product.
    layout = _Reduce(torch.serialization._get_layout, ("torch.sparse_csr",))
    sparse = _Reduce(torch._utils._rebuild_sparse_tensor, (layout, (
        _view(_long("0", 3), 0, 3), _view(_long("1", 2), 0, 2),
        _view(("storage", torch.FloatStorage, "2", "cpu", 2), 0, 2), (2, 2))))
    over = (_Pid(_long("1", 2)), 0, (2,), (1,), False, collections.OrderedDict())
    buf = io.BytesIO()
    _PidPickler(buf, protocol=2).dump({"w": sparse, "x": _STATE_WRITERS[writer](
        over, {"real": _view(_long("3", 2), 0, 2)})})
    path = tmp_path / "real-setter.pt"
    records = {"data.pkl": buf.getvalue(), "byteorder": b"little", "version": b"3\n",
               "data/0": struct.pack("<3q", 0, 1, 2), "data/1": struct.pack("<2q", 0, 1),
               "data/2": struct.pack("<2f", 1.0, 2.0), "data/3": struct.pack("<2q", 0, 10**8)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, body in records.items():
            z.writestr(f"archive/{name}", body)
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1])['w']; print('loaded', w.col_indices().tolist(), "
            "flush=True); (w @ torch.ones(2, 10**6)).sum()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert (run.stdout.startswith("loaded [0, 100000000]")
            and run.returncode == -signal.SIGSEGV), run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and rules(report) == {"SH108"}
    assert "sets attributes on a tensor" in report.findings[0].message


def test_an_empty_tensor_state_beside_a_sparse_tensor_scans_clean(tmp_path: Path) -> None:
    # what torch.save writes for a tensor subclass: _rebuild_from_type_v2 with state {}
    valid = tmp_path / "valid.pt"
    torch.save({"w": torch.eye(2).to_sparse()}, valid)
    args = (_Pid(("storage", torch.FloatStorage, "9", "cpu", 1)), 0, (1,), (1,), False,
            collections.OrderedDict())
    buf = io.BytesIO()
    _PidPickler(buf, protocol=2).dump(_STATE_WRITERS["from_type"](args, {}))
    extra = buf.getvalue()[2:-1]  # the call alone, stored under a new key

    def edit(data: bytes) -> bytes:
        at = data.rindex(b".")
        return data[:at] + b"X\x01\x00\x00\x00z" + extra + b"s" + data[at:]

    path = tmp_path / "beside.pt"
    _with_data_pkl(valid, path, edit)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("valid/data/9", struct.pack("<f", 1.0))
    assert torch.load(path)["z"].tolist() == [1.0]
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, report.findings


def test_a_storage_key_with_a_nul_reads_the_record_torch_reads(tmp_path: Path) -> None:
    # Column indices under key '1\x00zz': torch looks the record up as a C string and
    # reads data/1 (column 10**8); the scan read the valid record named data/1\x00zz.
    # Its only other finding (SH115, the name zipfile cuts to data/1) is medium: the
    # permissive policy passed the file, and torch.load's default crashed on first use.
    layout = _Reduce(torch.serialization._get_layout, ("torch.sparse_csr",))
    sparse = _Reduce(torch._utils._rebuild_sparse_tensor, (layout, (
        _view(_long("0", 3), 0, 3), _view(_long("1\0zz", 2), 0, 2),
        _view(("storage", torch.FloatStorage, "2", "cpu", 2), 0, 2), (2, 2))))
    buf = io.BytesIO()
    _PidPickler(buf, protocol=2).dump({"w": sparse})
    records = {"data.pkl": buf.getvalue(), "byteorder": b"little", "version": b"3\n",
               "data/0": struct.pack("<3q", 0, 1, 2), "data/1": struct.pack("<2q", 0, 10**8),
               "data/1Yzz": struct.pack("<2q", 0, 1), "data/2": struct.pack("<2f", 1.0, 2.0)}
    path = tmp_path / "nul-key.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, body in records.items():
            z.writestr(f"archive/{name}", body)
    path.write_bytes(path.read_bytes().replace(b"data/1Yzz", b"data/1\0zz"))
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1])['w']; print('loaded', w.col_indices().tolist(), "
            "flush=True); (w @ torch.ones(2, 10**6)).sum()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert (run.stdout.startswith("loaded [0, 100000000]")
            and run.returncode == -signal.SIGSEGV), run
    report = scan_one(path, ScanOptions(block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
    assert any("outside the plain dimension" in f.message for f in report.findings)


def test_a_bsr_tensor_with_empty_blocks_is_refused(tmp_path: Path) -> None:
    # Blocks of 1x0 values: torch's own validation (check_sparse_tensor_invariants)
    # passes the tensor, so the scan, which applies it, passed the file; torch.load's
    # default loads it and the first to_dense() divides by the block width (SIGFPE).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bsr = torch.sparse_bsr_tensor(torch.tensor([0, 1, 2, 2, 2]), torch.tensor([0, 1]),
                                      torch.ones(2, 1, 0), (4, 4), check_invariants=False)
    path = tmp_path / "empty-blocks.pt"
    torch.save({"w": bsr}, path)
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch\n"
            "with torch.sparse.check_sparse_tensor_invariants(True):\n"
            "    w = torch.load(sys.argv[1])['w']\n"
            "print('loaded', flush=True); w.to_dense()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded") and run.returncode == -signal.SIGFPE, run
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and rules(report) == {"SH108"}
    assert "zero dimension" in report.findings[0].message


def test_a_coalesced_coo_tensor_without_sparse_dims_holding_several_entries_is_refused(
        tmp_path: Path) -> None:
    # No sparse dims: every entry sits at the one empty index. torch's validation passes it
    # marked coalesced (so the scan, which mirrors it, did too), and torch's kernels trust
    # the mark: coalesce() keeps every entry, and to_dense() adds them into one place from
    # several threads unsynchronized, so its sums come out wrong and vary from run to run.
    n = 1000
    bad = torch.sparse_coo_tensor(torch.zeros(0, n, dtype=torch.long), torch.ones(n, 3), (3,),
                                  check_invariants=False, is_coalesced=True)
    path = tmp_path / "scalar.pt"
    torch.save({"w": bad}, path)
    code = ("import sys, torch; w = torch.load(sys.argv[1])['w']; "
            "print(w.is_coalesced(), w.coalesce()._nnz())")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.split() == ["True", str(n)], run
    report = scan_one(path)  # was CLEAN
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
    # torch's own such tensors, coalesced to one entry or not marked, still scan clean
    good = torch.sparse_coo_tensor(
        torch.zeros(0, 1, dtype=torch.long), torch.full((1, 3), float(n)), (3,),
        is_coalesced=True)
    uncoalesced = torch.sparse_coo_tensor(torch.zeros(0, n, dtype=torch.long),
                                          torch.ones(n, 3), (3,))
    for i, ok in enumerate((good, uncoalesced)):
        torch.save({"w": ok}, tmp_path / f"ok{i}.pt")
        assert scan_one(tmp_path / f"ok{i}.pt").verdict is Verdict.CLEAN


def test_values_over_the_index_storage_are_refused(tmp_path: Path) -> None:
    # Valid indices whose storage also backs the values (or a dense tensor beside them):
    # torch.save keeps the aliasing, torch's validation passes it, and a common in-place
    # op on the values (w.mul_(k), scaling a weight) rewrites the row pointers, so the
    # next to_dense() reads far outside the tensor.
    s = torch.tensor([0, 1, 1, 0])  # crow_indices [0, 1, 1], col_indices [0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR support is in beta
        aliased = torch.sparse_csr_tensor(s[0:3], s[3:4], s[1:2], (2, 2))  # value: crow[1]
        plain = torch.sparse_csr_tensor(torch.tensor([0, 1, 1]), torch.tensor([0]),
                                        torch.tensor([1]), (2, 2))
    path = tmp_path / "aliased.pt"
    torch.save({"w": aliased}, path)
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import torch; "
            "w = torch.load(sys.argv[1])['w']; w.to_dense(); print('loaded', flush=True); "
            "w.mul_(10**8); w.to_dense()")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loaded"), run
    assert run.returncode == -signal.SIGSEGV, run
    report = scan_one(path)  # was CLEAN
    assert report.verdict is Verdict.UNSAFE and "SH108" in rules(report)
    # a dense tensor over the index storage beside the sparse one: refused too
    torch.save({"w": plain, "d": plain.crow_indices()}, tmp_path / "dense.pt")
    assert "SH108" in rules(scan_one(tmp_path / "dense.pt"))
    torch.save({"w": plain, "d": plain.crow_indices().clone()}, tmp_path / "apart.pt")
    assert scan_one(tmp_path / "apart.pt").verdict is Verdict.CLEAN
