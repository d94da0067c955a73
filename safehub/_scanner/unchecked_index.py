"""Sparse and nested tensors: the index checks torch skips when it loads them, done on the
file's bytes.

``torch._utils._rebuild_sparse_tensor`` builds a COO, CSR, CSC, BSR or BSC tensor from the
file's index and value tensors with ``check_invariants=False``, and torch.load validates the
indices afterwards only under ``torch.sparse.check_sparse_tensor_invariants`` (off by
default, weights_only included). Indices outside the tensor make its first ``to_dense()``,
``coalesce()`` or product read and write outside its data.

Here a rebuild of a torch zip checkpoint is modelled as torch runs it: the layout, the
index tensors (``_rebuild_tensor_v2`` views of storages the archive holds), the values'
shape and the size are read from the pickle, the index bytes from the storage records
torch would read, and torch's own validation (``_validate_sparse_coo_tensor_args``,
``_validate_sparse_compressed_tensor_args``) is applied to them. Anything the model cannot
resolve exactly, or index data past a cap, is a problem: it fails closed (SH108).

``torch._utils._rebuild_nested_tensor(buffer, sizes, strides, offsets)`` is checked the same
way: torch's ``_nested_view_from_buffer`` reads each row's strides as many as ``sizes`` has
columns before it compares the two shapes (a wider ``sizes`` reads past the strides
tensor: heap bytes in its error message, a crash when far enough), so the metadata must be
Long, shaped alike, and every component inside the buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from safehub._scanner.pickle_vm import (
    Call,
    Global,
    PersistentRef,
    StreamResult,
    SymDict,
    SymList,
    SymSet,
    render,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAX_INDEX_BYTES", "REBUILD_NESTED", "REBUILD_SPARSE", "StorageRecords",
           "unchecked_index_problems"]

REBUILD_SPARSE = "torch._utils._rebuild_sparse_tensor"
REBUILD_NESTED = "torch._utils._rebuild_nested_tensor"
_CHECKED = (REBUILD_SPARSE, REBUILD_NESTED)
_REBUILD_TENSOR = "torch._utils._rebuild_tensor_v2"
_GET_LAYOUT = "torch.serialization._get_layout"
_LAYOUTS = {"torch.sparse_coo": "coo", "torch.sparse_csr": "csr", "torch.sparse_csc": "csc",
            "torch.sparse_bsr": "bsr", "torch.sparse_bsc": "bsc"}
# Index storage types and their numpy element type (torch stores them in the byte order the
# archive's ``byteorder`` record names, little-endian without one).
_INDEX_TYPES = {"Long": "i8", "Int": "i4"}
# Index bytes read for one file, all sparse tensors together. Real sparse checkpoints are
# small next to this; past it the indices are not vouched for (SH108).
MAX_INDEX_BYTES = 128 << 20
_INT64_MAX = (1 << 63) - 1
_INT32_MAX = (1 << 31) - 1


class StorageRecords(Protocol):
    """The storage records of the archive a pickle stream was read from, as torch reads
    them: ``read`` returns ``length`` bytes from ``start`` of storage ``key`` (whose record
    must hold exactly ``nbytes``), or why they cannot be known."""

    @property
    def byteorder(self) -> str:
        """``<`` or ``>``, or why the byte order cannot be known."""

    def read(self, key: str, nbytes: int, start: int, length: int) -> bytes | str: ...


class _Unproven(Exception):
    """Why a sparse or nested rebuild cannot be vouched for (internal)."""


def unchecked_index_problems(res: StreamResult, records: StorageRecords | None) -> Iterator[
        tuple[Global | Call, str]]:
    """(where, why) for each use of a sparse or nested rebuild in the stream that is not
    shown to pass torch's validation of its index data."""
    sparse = [g for g in res.globals if g.effective in _CHECKED]
    if not sparse:
        return
    if records is None:
        yield sparse[0], ("no storage records this loader reads are known, so its index "
                          "data cannot be checked")
        return
    try:
        import numpy  # noqa: F401  (the index checks run on numpy arrays)
    except ImportError:
        yield sparse[0], "numpy is not installed, so index data cannot be checked"
        return
    ids = {id(g) for g in sparse}
    stray = _stray_use(res, ids)
    if stray:
        yield sparse[0], stray
        return
    written = _written_tensor(res)
    if written:
        yield sparse[0], written
        return
    storages = _Storages(res)
    budget = [MAX_INDEX_BYTES]
    for call in res.calls:
        if id(call.func) not in ids:
            continue
        try:
            if call.builds:
                raise _Unproven("BUILD sets a state on the rebuilt tensor")
            if isinstance(call.func, Global) and call.func.effective == REBUILD_NESTED:
                _check_nested(call, records, storages, budget)
            else:
                _check_rebuild(call, records, storages, budget)
        except _Unproven as exc:
            yield call, str(exc)
    shared = _shared_index_storage(res, storages)
    if shared:
        yield sparse[0], shared


def _shared_index_storage(res: StreamResult, storages: _Storages) -> str:
    """Why a storage holding index data is reachable other than through index tensors: a
    values tensor, nested buffer or dense tensor over it lets an in-place op on that
    tensor (``sparse.mul_(k)`` scales its own values) rewrite the indices checked here."""
    if not storages.index_keys:
        return ""

    def parts(call: Call) -> tuple[object, ...]:
        return () if id(call) in storages.index_calls else (call.args, call.kwargs,
                                                           call.state)

    roots: list[object] = [res.value, *(part for call in res.calls for part in parts(call)),
                           *(m.target for m in res.mutations)]
    for value in _reachable(roots, parts):
        if isinstance(value, PersistentRef):
            parsed = _storage_ref(value.pid)
            if parsed is not None and parsed[0] in storages.index_keys:
                return (f"storage {parsed[0]!r} holds index data and also backs a tensor "
                        "that is not an index tensor: an in-place op on it rewrites the "
                        "indices")
    return ""


def _stray_use(res: StreamResult, ids: set[int]) -> str:
    """Why the rebuild function reaches something other than a direct call: given to
    ``_rebuild_from_type_v2``, kept in a container or state, BUILD or NEWOBJ on it."""
    for call in res.calls:
        if id(call.func) in ids and (call.opcode != "REDUCE" or call.kwargs is not None):
            return f"the rebuild function is called by {call.opcode}, not REDUCE"

    def parts(call: Call) -> tuple[object, ...]:
        # calling it is the use checked here; every call is in res.calls
        func = () if id(call.func) in ids else (call.func,)
        return (*func, call.args, call.kwargs, call.state)

    roots: list[object] = [res.value]
    for call in res.calls:
        roots.extend((call.args, call.kwargs, call.state))
    roots.extend(ref.pid for ref in res.persistent)
    roots.extend(m.target for m in res.mutations)
    for value in _reachable(roots, parts, lambda ref: (ref.pid,)):
        if id(value) in ids:
            return ("the rebuild function is passed on as a value, not called directly: "
                    "what calls it, and with what, is not modelled")
    return ""


def _reachable(roots: list[object], call_parts: Callable[[Call], tuple[object, ...]],
               ref_parts: Callable[[PersistentRef], tuple[object, ...]] = lambda ref: ()
               ) -> Iterator[object]:
    """Each object reachable from ``roots`` through the VM's containers, once (scalars and
    None left out); what a Call or a persistent reference leads on to is the caller's."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        value = todo.pop()
        if id(value) in seen or isinstance(value, (str, bytes, int, float)) or value is None:
            continue
        seen.add(id(value))
        yield value
        if isinstance(value, tuple):
            todo.extend(value)
        elif isinstance(value, (SymList, SymSet)):
            todo.extend(value.items)
        elif isinstance(value, SymDict):
            for k, v in value.items:
                todo.extend((k, v))
        elif isinstance(value, Call):
            todo.extend(call_parts(value))
        elif isinstance(value, PersistentRef):
            todo.extend(ref_parts(value))


def _written_tensor(res: StreamResult) -> str:
    """A stream that writes into a loaded storage or tensor (SETITEM on it) can change
    index data after it was read here; BUILD on a torch object (``Tensor.__setstate__``'s
    legacy ``set_``) can swap a tensor's storage. torch.save writes neither."""
    for m in res.mutations:
        return f"{m.opcode} at offset {m.offset} writes into a loaded object"
    for call in res.calls:
        if call.writes and _torch_object(call):
            return f"{call.writes} writes into what {render(call.func)[:80]} returns"
        if call.builds and isinstance(call.func, Global) and call.func.effective.startswith(
                "torch."):
            return f"BUILD sets the state of a torch object (offset {call.offset})"
        if _sets_tensor_state(call):
            return (f"{render(call.func)[:80]} sets attributes on a tensor (offset "
                    f"{call.offset}): Tensor's real and imag setters copy into its storage, "
                    "which index tensors share")
    return ""


# torch's rebuilds that setattr a state's entries on the tensor they make (torch.save
# writes a state only for tensor subclasses and tensors with Python attributes, and
# torch._utils._set_obj_state applies it whatever its keys).
_STATE_REBUILDS = ("torch._tensor._rebuild_from_type_v2",
                   "torch._utils._rebuild_parameter_with_state")


def _sets_tensor_state(call: Call) -> bool:
    if not (isinstance(call.func, Global) and call.func.effective in _STATE_REBUILDS):
        return False
    state = call.args[3] if isinstance(call.args, tuple) and len(call.args) == 4 else call.args
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    return not all(p is None or (isinstance(p, SymDict) and not p.items) for p in parts)


def _torch_object(call: Call) -> bool:
    """What a torch callable (or a computed one) returns: a tensor or storage, whose
    __setitem__ writes into loaded data. Containers (OrderedDict, defaultdict, list) and
    numpy's arrays hold no torch storage."""
    func = call.func
    return not isinstance(func, Global) or func.effective.startswith("torch.")


class _Storages:
    """Storage key -> (type name, element count) as torch's persistent_load decides them:
    the first reference to a key loads it, later ones get that storage back whatever
    type and size they name. Empty storages are not remembered (their data pointer is
    null), so each reference to one loads its own.

    A reference not read exactly here (``b'storage'``, a bool count, a storage class
    named otherwise) may still be the one torch loads first, with its own type: its key
    is ``unread``, and a key that is not a plain string (torch takes any) makes every
    key unread, so that no index from such a storage is vouched for."""

    def __init__(self, res: StreamResult):
        self.types: dict[str, tuple[str, int]] = {}
        self.unread: set[str] = set()
        self.any_unread = False
        # the storages index tensors read, and those tensors' rebuild calls
        self.index_keys: set[str] = set()
        self.index_calls: set[int] = set()
        for ref in res.persistent:
            parsed = _storage_ref(ref.pid)
            if parsed is None:
                pid = ref.pid
                key = pid[2] if isinstance(pid, tuple) and len(pid) == 5 else None
                if isinstance(key, str):
                    self.unread.add(key)
                else:
                    self.any_unread = True
                continue
            key, type_name, numel = parsed
            if key not in self.types and key not in self.unread and numel > 0:
                self.types[key] = (type_name, numel)

    def first(self, key: str, named: tuple[str, int]) -> tuple[str, int]:
        """The type and count of the storage torch gives a reference to ``key``."""
        if self.any_unread or key in self.unread:
            raise _Unproven(f"index storage {key!r} may be loaded first by a storage "
                            "reference not read here, with the type that one names")
        return self.types.get(key, named)


def _storage_ref(pid: object) -> tuple[str, str, int] | None:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], Global) and isinstance(pid[2], str)
            and isinstance(pid[4], int) and not isinstance(pid[4], bool) and pid[4] >= 0):
        return None
    module, _, name = pid[1].effective.rpartition(".")
    # torch.UntypedStorage pickles as torch.storage.UntypedStorage (uint8 elements)
    if module not in ("torch", "torch.cuda", "torch.storage") or not name.endswith("Storage"):
        return None
    return pid[2], name[: -len("Storage")], pid[4]


def _check_rebuild(call: Call, records: StorageRecords, storages: _Storages,
                   budget: list[int]) -> None:
    args = call.args
    if not (isinstance(args, tuple) and len(args) == 2 and isinstance(args[1], tuple)):
        raise _Unproven("the sparse rebuild's arguments are not (layout, data)")
    layout = _layout(args[0])
    data = args[1]
    if layout == "coo":
        if len(data) not in (3, 4):
            raise _Unproven("COO data is not (indices, values, size[, is_coalesced])")
        coalesced = data[3] if len(data) == 4 else None
        if not (coalesced is True or coalesced is False or coalesced is None):
            raise _Unproven("COO is_coalesced is not True, False or None")
        indices = _index_tensor(data[0], records, storages, budget)
        _check_coo(indices, _values_shape(data[1]), _size(data[2]), coalesced is True)
        return
    if len(data) != 4:
        raise _Unproven("compressed data is not (compressed, plain, values, size)")
    compressed = _index_tensor(data[0], records, storages, budget)
    plain = _index_tensor(data[1], records, storages, budget)
    _check_compressed(layout, compressed, plain, _values_shape(data[2]), _size(data[3]))


def _layout(value: object) -> str:
    if isinstance(value, Call) and isinstance(value.func, Global) and (
            value.func.effective == _GET_LAYOUT and value.opcode == "REDUCE"
            and value.kwargs is None and not value.builds and isinstance(value.args, tuple)
            and len(value.args) == 1 and isinstance(value.args[0], str)):
        layout = _LAYOUTS.get(value.args[0])
        if layout is not None:
            return layout
    raise _Unproven("the sparse layout is not one of torch's five, named by _get_layout")


def _tensor_call(value: object, what: str) -> tuple[object, ...]:
    """The arguments of a plain ``_rebuild_tensor_v2`` call nothing changes afterwards."""
    if not (isinstance(value, Call) and isinstance(value.func, Global)
            and value.func.effective == _REBUILD_TENSOR and value.opcode == "REDUCE"
            and value.kwargs is None and isinstance(value.args, tuple)
            and len(value.args) in (6, 7)):
        raise _Unproven(f"the {what} tensor is not rebuilt by {_REBUILD_TENSOR}")
    if value.builds:
        raise _Unproven(f"BUILD sets a state on the {what} tensor (Tensor.__setstate__ can "
                        "swap its storage)")
    if len(value.args) == 7 and not (value.args[6] is None or (
            isinstance(value.args[6], SymDict) and not value.args[6].items)):
        raise _Unproven(f"the {what} tensor carries tensor metadata (conj/neg bits)")
    return value.args


def _ints(value: object, what: str) -> tuple[int, ...]:
    items = value.items if isinstance(value, SymList) else value
    if not isinstance(items, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT64_MAX
            for v in items):
        raise _Unproven(f"the {what} is not a list of non-negative integers")
    return tuple(items)


def _values_shape(value: object) -> tuple[int, ...]:
    return _ints(_tensor_call(value, "values")[2], "values shape")


def _size(value: object) -> tuple[int, ...]:
    if isinstance(value, Call) and isinstance(value.func, Global) and (
            value.func.effective == "torch.Size" and value.opcode == "REDUCE"
            and value.kwargs is None and not value.builds and isinstance(value.args, tuple)
            and len(value.args) == 1):
        value = value.args[0]
    return _ints(value, "sparse tensor size")


class _Index:
    """An index tensor as torch builds it: values, dtype and strides."""

    def __init__(self, array: np.ndarray, dtype: str, strides: tuple[int, ...]):
        self.array = array  # int64, the tensor's shape
        self.dtype = dtype  # "Long" or "Int"
        self.strides = strides


def _index_tensor(value: object, records: StorageRecords, storages: _Storages,
                  budget: list[int], types: tuple[str, ...] = ("Int", "Long")) -> _Index:
    import numpy as np

    args = _tensor_call(value, "index")
    ref = args[0]
    parsed = _storage_ref(ref.pid) if isinstance(ref, PersistentRef) else None
    if parsed is None:
        raise _Unproven("the index tensor's storage is not a storage record reference")
    key = parsed[0]
    storages.index_keys.add(key)
    storages.index_calls.add(id(value))
    first = storages.first(key, parsed[1:])
    type_name, numel = first
    code = _INDEX_TYPES.get(type_name) if type_name in types else None
    if code is None:
        raise _Unproven(f"index storage {key!r} holds {type_name}, not {' or '.join(types)}")
    offset = args[1]
    if not (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0):
        raise _Unproven("the index tensor's storage offset is not a non-negative integer")
    shape = _ints(args[2], "index tensor shape")
    strides = _ints(args[3], "index tensor strides")
    if len(shape) != len(strides):
        raise _Unproven("the index tensor's shape and strides differ in length")
    width = int(code[1])
    count = 1
    for d in shape:
        count *= d
    if count == 0:
        return _Index(np.zeros(shape, dtype=np.int64), type_name, strides)
    last = offset + sum((d - 1) * s for d, s in zip(shape, strides, strict=True))
    if last >= numel:
        raise _Unproven(f"the index tensor reaches past its storage {key!r}")
    length = (last - offset + 1) * width
    # What is read, and what the view expands to (a zero stride repeats one value over
    # any count of elements), both count against the limit.
    cost = max(length, count * 8)
    if cost > budget[0]:
        raise _Unproven(f"index data past the {MAX_INDEX_BYTES}-byte limit on what is read")
    budget[0] -= cost
    if records.byteorder not in ("<", ">"):
        raise _Unproven(records.byteorder)
    data = records.read(key, numel * width, offset * width, length)
    if isinstance(data, str):
        raise _Unproven(data)
    flat = np.frombuffer(data, dtype=np.dtype(records.byteorder + code))
    view = np.lib.stride_tricks.as_strided(
        flat, shape=shape, strides=tuple(s * width for s in strides), writeable=False)
    return _Index(view.astype(np.int64), type_name, strides)


def _check_coo(indices: _Index, values: tuple[int, ...], size: tuple[int, ...],
               coalesced: bool) -> None:
    """torch's ``_validate_sparse_coo_tensor_args`` and the checks its unchecked
    construction makes anyway (nnz and dense sizes)."""
    import numpy as np

    ind = indices.array
    if not values:
        values = (1,)  # expand_values_if_needed: a 0-dim value is one entry
    if ind.ndim != 2:
        raise _Unproven(f"COO indices have {ind.ndim} dimensions, not 2")
    sparse_dim, nnz = ind.shape
    if len(size) != sparse_dim + len(values) - 1:
        raise _Unproven("COO size has other than sparse_dim + dense_dim dimensions")
    if nnz != values[0] or tuple(values[1:]) != size[sparse_dim:]:
        raise _Unproven("COO values do not match the indices' nnz and the dense sizes")
    if ind.size:
        if int(ind.min()) < 0:
            raise _Unproven("COO indices hold a negative index")
        bounds = np.array(size[:sparse_dim], dtype=np.int64)
        if bool((ind.max(axis=1) >= bounds).any()):
            raise _Unproven("COO indices hold an index past the size")
    if coalesced and nnz > 1:
        # With no sparse dims every entry has the same (empty) index: torch's validation
        # lets that pass as coalesced, and its kernels then add all the entries into one
        # place from several threads unsynchronized (to_dense() sums come out wrong);
        # torch's coalesce() never leaves more than one entry there.
        # flatten_indices: row-major linear index over the sparse dims, int64 arithmetic
        linear = np.zeros(nnz, dtype=np.int64)
        with np.errstate(over="ignore"):
            for d in range(sparse_dim):
                linear = linear * np.int64(size[d]) + ind[d]
        if int(np.diff(linear).min()) <= 0:
            raise _Unproven("COO marked coalesced holds unsorted or repeated indices")


def _check_compressed(layout: str, compressed: _Index, plain: _Index,
                      values: tuple[int, ...], size: tuple[int, ...]) -> None:
    """torch's ``_validate_sparse_compressed_tensor_args`` (invariants 3.x and 5.x of
    pearu.github.io/bsr_tensor_invariants.html), in int64 arithmetic, plus dense sizes
    matching the values (torch leaves those to later kernels)."""
    import numpy as np

    cidx, idx = compressed.array, plain.array
    if compressed.dtype != plain.dtype:
        raise _Unproven("compressed and plain indices differ in dtype")
    batch = cidx.ndim - 1
    block = 2 if layout in ("bsr", "bsc") else 0
    dense = len(values) - batch - block - 1
    if batch < 0 or idx.ndim != cidx.ndim or dense < 0:
        raise _Unproven("compressed index and values dimensionalities do not match")
    if compressed.strides[-1] != 1 or plain.strides[-1] != 1:
        raise _Unproven("compressed indices are not contiguous per batch")
    if len(size) != batch + 2 + dense:
        raise _Unproven("the size has other than batch + 2 + dense dimensions")
    if not (size[:batch] == cidx.shape[:batch] == idx.shape[:batch] == values[:batch]):
        raise _Unproven("batch dimensions differ between indices, values and size")
    if block and not (values[batch + 1] and values[batch + 2]):
        # torch's validation passes an empty block, and its kernels divide by the block
        # size (to_dense() dies of SIGFPE); torch never makes one (to_sparse_bsr refuses)
        raise _Unproven("a block of the values has a zero dimension")
    blocks = (values[batch + 1], values[batch + 2]) if block else (1, 1)
    if block and (size[batch] % blocks[0] or size[batch + 1] % blocks[1]):
        raise _Unproven("the size is not made of whole blocks")
    if tuple(values[batch + 1 + block:]) != size[batch + 2:]:
        raise _Unproven("the values' dense sizes differ from the size's")
    rows, cols = size[batch] // blocks[0], size[batch + 1] // blocks[1]
    cdim, pdim = (rows, cols) if layout in ("csr", "bsr") else (cols, rows)
    nnz = values[batch]
    if cidx.shape[-1] != cdim + 1 or idx.shape[-1] != nnz:
        raise _Unproven("compressed indices do not have cdim + 1 entries, or plain "
                        "indices nnz entries")
    if compressed.dtype == "Int" and max(cdim, pdim, nnz) > _INT32_MAX:
        raise _Unproven("a dimension or nnz overflows the int32 indices")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= pdim):
        raise _Unproven("plain indices hold an index outside the plain dimension")
    flat_c = cidx.reshape(-1, cdim + 1)
    if cdim == 0 or flat_c.shape[0] == 0:
        return  # torch iterates over cidx[..., :-1]: nothing to check
    if bool((flat_c[:, 0] != 0).any()) or bool((flat_c[:, -1] != nnz).any()):
        raise _Unproven("compressed indices do not start at 0 and end at nnz")
    steps = np.diff(flat_c, axis=1)
    if bool((steps < 0).any()) or bool((steps > pdim).any()):
        raise _Unproven("compressed indices decrease or step past the plain dimension")
    if nnz < 2:
        return
    # Within each compressed slice the plain indices increase strictly; a position that
    # starts a slice is exempt from comparing with the one before it.
    flat_i = idx.reshape(-1, nnz)
    starts = np.zeros((flat_c.shape[0], nnz + 1), dtype=bool)
    starts[np.arange(flat_c.shape[0])[:, None], flat_c] = True
    rising = np.diff(flat_i, axis=1) > 0
    if not bool((rising | starts[:, 1:nnz]).all()):
        raise _Unproven("plain indices within a compressed slice are unsorted or repeated")


_MAX_BUFFER = 1 << 50  # elements; past it float64 extents would not be exact


def _check_nested(call: Call, records: StorageRecords, storages: _Storages,
                  budget: list[int]) -> None:
    """torch's ``_nested_view_from_buffer``: a 1-D contiguous buffer, Long metadata with
    ``sizes`` and ``strides`` of one (rows, dims) shape and one offset per row (checked
    here before anything is read: torch reads strides as wide as ``sizes`` first), every
    non-empty component view inside the buffer."""
    import numpy as np

    args = call.args
    if not (isinstance(args, tuple) and len(args) == 4):
        raise _Unproven("the nested rebuild's arguments are not (buffer, sizes, strides, "
                        "offsets)")
    buffer = _tensor_call(args[0], "buffer")
    shape = _ints(buffer[2], "buffer shape")
    if len(shape) != 1 or _ints(buffer[3], "buffer strides") != (1,) or shape[0] >= _MAX_BUFFER:
        raise _Unproven("the nested tensor's buffer is not one contiguous dimension")
    meta = [_index_tensor(a, records, storages, budget, ("Long",)) for a in args[1:]]
    for part, name in zip(meta, ("sizes", "strides", "offsets"), strict=True):
        expected = tuple(int(np.prod(part.array.shape[i + 1:], dtype=np.int64))
                         for i in range(part.array.ndim))
        if any(n > 1 and s != e for n, s, e in zip(part.array.shape, part.strides, expected,
                                                    strict=True)):
            raise _Unproven(f"the nested tensor's {name} are not contiguous")
    sizes, strides, offsets = (m.array for m in meta)
    if sizes.ndim != 2 or strides.shape != sizes.shape or offsets.shape != sizes.shape[:1]:
        raise _Unproven("nested sizes, strides and offsets differ in shape (torch reads "
                        "strides as wide as sizes before comparing them)")
    if (sizes.size and (int(sizes.min()) < 0 or int(strides.min()) < 0)) or (
            offsets.size and int(offsets.min()) < 0):
        raise _Unproven("nested sizes, strides or offsets are negative")
    if not sizes.size:
        return
    live = (sizes > 0).all(axis=1)
    # float64 is exact here: every term is non-negative and anything past the buffer
    # (fewer than 2**50 elements) is refused, so a sum that rounds stays past it
    extent = offsets.astype(np.float64) + ((sizes.astype(np.float64) - 1)
                                           * strides.astype(np.float64)).sum(axis=1)
    if bool((live & (extent >= shape[0])).any()):
        raise _Unproven("a nested tensor component reaches past its buffer")
