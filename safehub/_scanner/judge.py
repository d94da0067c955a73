"""Judge what a pickle stream would do: allowlist first, knowledge base for severity."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import Enum

from safehub._scanner import knowledge
from safehub._scanner.allowlist import (
    DEFAULT_ALLOWED,
    TORCHSCRIPT_ALLOWED,
    matches,
    unchecked_sparse,
)
from safehub._scanner.context import FileScan
from safehub._scanner.harmless import DEFAULTDICT, DEFAULTDICT_FACTORIES, HARMLESS
from safehub._scanner.pickle_vm import (
    Call,
    ComputedGlobal,
    Global,
    Opaque,
    PersistentRef,
    StreamResult,
    SymDict,
    render,
)
from safehub._scanner.unchecked_index import (
    REBUILD_NESTED,
    REBUILD_SPARSE,
    StorageRecords,
    unchecked_index_problems,
)
from safehub.rules import Severity

__all__ = ["Loader", "judge_stream"]


class Loader(Enum):
    """Who unpickles the stream, which decides what persistent ids may mean."""

    PICKLE = "pickle"  # pickle.load / joblib.load / numpy allow_pickle: no persistent_load
    TORCH_ZIP = "torch-zip"  # torch.load of a zip checkpoint: ('storage', type, key, loc, numel)
    TORCH_LEGACY = "torch-legacy"  # torch.load legacy: storage tuples, or ('module', ...)
    # The ``pickle`` member of torch's legacy tar: keys of the storages and tensors records
    # (``deserialized_objects[int(pid)]``), or (class, source file, source) records.
    TORCH_TAR = "torch-tar"
    TORCHSCRIPT = "torchscript"  # torch.jit.load: __torch__ classes resolve to archive code


def judge_stream(scan: FileScan, res: StreamResult, location: str, loader: Loader,
                 records: StorageRecords | None = None) -> bool:
    """Add findings for one analyzed stream; returns True when the stream raised none.

    ``records`` are the storage records the loader reads for this stream's persistent
    ids (a torch zip's ``data/<key>``): with them, sparse tensors are checked on their
    index data; without them, every sparse rebuild is reported (SH108)."""
    before = len(scan.findings)
    calls_by_func: dict[int, Call] = {}
    calls_by_arg: dict[int, Call] = {}
    for call in res.calls:
        calls_by_func.setdefault(id(call.func), call)
        if isinstance(call.args, tuple):
            for arg in call.args:
                calls_by_arg.setdefault(id(arg), call)

    def payload_of(value: object) -> str:
        call = calls_by_func.get(id(value)) or calls_by_arg.get(id(value))
        return render(call) if call is not None else render(value)

    _judge_globals(scan, res.globals, location, loader, payload_of, _misused_harmless(res))

    for computed in res.computed:
        scan.add("SH102", "imports a name computed at load time: "
                 f"{render(computed.module)}.{render(computed.name)}",
                 location=location, offset=computed.offset, subject="STACK_GLOBAL",
                 payload=payload_of(computed))
    for code, offset in res.extensions:
        scan.add("SH103", f"imports extension code {code} from the copyreg registry",
                 location=location, offset=offset, subject=f"EXT:{code}")
    seen_calls: set[str] = set()
    for call in res.calls:
        if isinstance(call.func, (Global, ComputedGlobal, Opaque)):
            continue
        text = render(call)
        if text in seen_calls:
            continue
        seen_calls.add(text)
        scan.add("SH104", f"{call.opcode} calls a computed object: {render(call.func)}",
                 location=location, offset=call.offset, subject=call.opcode, payload=text)
    for mutation in res.mutations:
        if isinstance(mutation.target, (Global, ComputedGlobal)):
            scan.add("SH105", f"{mutation.opcode} modifies {render(mutation.target)}",
                     location=location, offset=mutation.offset, subject=mutation.opcode,
                     payload=render(mutation.target))
    legacy = next((g for g in res.globals if unchecked_sparse(g.effective)
                   and g.effective != REBUILD_SPARSE), None)
    if legacy is not None:
        scan.add("SH108", f"{SPARSE_PROBLEM}: {LEGACY_SPARSE}", location=location,
                 offset=legacy.offset, subject=legacy.effective,
                 payload=payload_of(legacy)[:200])
    for where, why in unchecked_index_problems(
            res, records if loader is Loader.TORCH_ZIP else None):
        func = where.func if isinstance(where, Call) else where
        name = func.effective if isinstance(func, Global) else REBUILD_SPARSE
        problem = NESTED_PROBLEM if name == REBUILD_NESTED else SPARSE_PROBLEM
        scan.add("SH108", f"{problem}: {why}", location=location, offset=where.offset,
                 subject=name, payload=payload_of(where)[:200])
    _judge_allocations(scan, res, location)
    for call in res.calls:
        target = _rebuild_target_problem(call)
        if target:
            scan.add("SH105", target, location=location, offset=call.offset,
                     subject=_REBUILD_FROM_TYPE, payload=render(call)[:200])
        if call.kwargs is not None and _torch_keywords(call):
            scan.add("SH108", f"passes keyword arguments to {render(call.func)} (NEWOBJ_EX): "
                     "torch's constructors take raw memory addresses as keywords (Tensor("
                     "cdata=...), UntypedStorage(allocator=...)) and use them unchecked; torch "
                     "never pickles its classes with keywords", location=location,
                     offset=call.offset, subject="NEWOBJ_EX", payload=render(call)[:200])
        if _array_constructor(call):
            scan.add("SH108", f"calls the numpy array class {render(call.func)} on a buffer "
                     f"({call.opcode}): ndarray(shape, dtype, buffer) takes the file's bytes "
                     "as the array's memory, as object pointers for an object dtype; numpy "
                     "pickles arrays through _reconstruct and a state", location=location,
                     offset=call.offset, subject=render(call.func), payload=render(call)[:200])
        problem = _dtype_state_problem(call) if call.builds else ""
        if problem:
            scan.add("SH108", problem, location=location, offset=call.offset,
                     subject="numpy.dtype", payload=render(call)[:200])
    for ref in res.persistent:
        problem = _persistent_problem(ref, loader)
        if problem:
            scan.add("SH106", problem, location=location, offset=ref.offset,
                     subject="PERSID", payload=render(ref))
    for offset in res.out_of_band[:1]:
        scan.add("SH107", "uses out-of-band buffers (NEXT_BUFFER/READONLY_BUFFER)",
                 location=location, offset=offset, subject="NEXT_BUFFER")
    for offset in res.frame_splits[:1]:
        scan.add("SH160", "a pickle frame ends inside an opcode or after STOP: loaders "
                 "reading a file and reading memory see different opcodes", location=location,
                 offset=offset, subject="FRAME")
    if res.limit:
        scan.add("SH191", f"pickle analysis stopped: {res.limit}", location=location,
                 offset=res.error_offset)
    elif res.error:
        rule = "SH111" if res.truncated else "SH110"
        scan.add(rule, f"pickle stream fails to load: {res.error}", location=location,
                 offset=res.error_offset, subject="pickle")
    return len(scan.findings) == before


def _judge_globals(
    scan: FileScan,
    globals_: Iterable[Global],
    location: str,
    loader: Loader,
    payload_of: Callable[[object], str],
    misused: set[int],
) -> None:
    extra = scan.options.allowed_globals
    reported: set[str] = set()
    harmless: set[str] = set()
    for g in globals_:
        name = g.effective
        if name in reported or name in DEFAULT_ALLOWED:
            continue
        if name in HARMLESS and id(g) not in misused:
            if name not in harmless:
                harmless.add(name)
                allowed = any(matches(p, name) for p in extra)
                scan.add("SH175", f"imports {name}: harmless data class ({HARMLESS[name]})",
                         location=location, offset=g.offset, subject=name,
                         payload=payload_of(g),
                         allowed_by=scan.options.allowed_by if allowed else "")
            continue
        if loader is Loader.TORCHSCRIPT and (
            name in TORCHSCRIPT_ALLOWED or name.startswith("__torch__.")
        ):
            continue  # resolved by torch.jit against the archive's code (reported as SH120)
        reported.add(name)
        info = knowledge.lookup(name) or knowledge.lookup(g.raw)
        severity = info.severity if info else Severity.MEDIUM
        explanation = info.explanation if info else "not needed to rebuild tensors or containers"
        chain = _attribute_chain(g)
        if chain:
            # ``pathlib`` + ``os.system``: protocol 4 walks the name's attributes from the
            # module, so the name reaches whatever the module imported, which the knowledge
            # entry for the module (``pathlib``: a harmless path value) does not describe.
            reached = max((hit for hit in map(knowledge.lookup, chain) if hit),
                          key=lambda hit: hit.severity.rank, default=None)
            if reached is not None and reached.severity.rank > severity.rank:
                severity, explanation = reached.severity, reached.explanation
            if severity.rank < Severity.HIGH.rank:
                severity = Severity.HIGH
                explanation = ("walks attributes of attributes of the module: it reaches "
                               "whatever the module imported (os, sys, subprocess)")
        if not name.removeprefix(".").split(".", 1)[0].isidentifier():
            # `site-packages.x`, `lib-dynload.y`: a folder on the import path reaches any
            # installed module under a name no knowledge table lists.
            severity = Severity.CRITICAL
            explanation = ("imported through a folder or file on the import path whose name "
                           "is not a package name (it reaches modules under other names)")
        if id(g) in misused:
            explanation = ("a defaultdict whose default factory is not a plain value type or "
                           "is set by BUILD (the factory is called on every missing key)")
        rule = "SH100" if severity.rank >= Severity.HIGH.rank else "SH101"
        allowed_by = ""
        if severity is not Severity.CRITICAL and any(matches(p, name) for p in extra):
            allowed_by = scan.options.allowed_by
        spelled = name if g.raw == name else f"{name} (written as {g.raw})"
        scan.add(rule, f"imports {spelled}: {explanation}", location=location, offset=g.offset,
                 subject=name, payload=payload_of(g),
                 severity=severity, allowed_by=allowed_by)


# torch's own BUILD: _rebuild_from_type_v2(func, new_type, args, state) calls func(*args) and
# sets the state's attributes on what it returns. torch pickles only tensors this way (func
# is one of torch._utils' _rebuild_* functions, which make a new tensor); any other allowed
# callable may return a process-wide object (calling an allowed enum class returns its
# member), whose attributes the state would then rewrite for the whole process.
_REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"


def _rebuild_target_problem(call: Call) -> str:
    func = call.func
    if not (isinstance(func, Global) and func.effective == _REBUILD_FROM_TYPE):
        return ""
    first = call.args[0] if isinstance(call.args, tuple) and call.args else None
    if isinstance(first, Global) and first.effective.startswith("torch._utils._rebuild_"):
        return ""
    return (f"{_REBUILD_FROM_TYPE} sets a state on what {render(first)[:80]} returns, not on "
            "a tensor torch._utils rebuilds: it can rewrite a process-wide object")


# torch._utils._rebuild_sparse_tensor and the legacy sparse constructors (torch.sparse.
# FloatTensor(indices, values, size)) build a sparse tensor from the file's index and value
# tensors unchecked; torch.load checks the indices afterwards only under torch.sparse.
# check_sparse_tensor_invariants, which is off by default (weights_only too), and plain pickle
# never. Indices outside the tensor, or compressed indices that run past the values, make the
# first to_dense(), coalesce() or matrix product read and write memory outside the tensor's
# data (the process crashes). A rebuild in a torch zip checkpoint is checked on the archive's
# index data as torch's own validation would (safehub._scanner.sparse); any other use of
# these names (another format, the legacy constructors, a call the model cannot resolve) is
# reported.
SPARSE_PROBLEM = (
    "builds a sparse tensor whose indices torch.load does not check (torch.sparse."
    "check_sparse_tensor_invariants is off by default, weights_only included): indices "
    "outside the tensor make its first to_dense(), coalesce() or product read and write "
    "memory outside its data, and these are not shown valid")
# torch._utils._rebuild_nested_tensor(buffer, sizes, strides, offsets): torch reads each
# row's strides as wide as sizes before it compares the two tensors' shapes, past the end of
# the strides tensor (heap bytes in its error message, a crash further on), on
# torch.load(weights_only=True) itself. Checked the same way (safehub._scanner.unchecked_index).
NESTED_PROBLEM = (
    "builds a nested tensor from size, stride and offset tensors torch reads unchecked "
    "(a sizes tensor wider than the strides makes torch.load read past the strides: heap "
    "bytes in its error, or a crash), and these are not shown valid")
LEGACY_SPARSE = ("a legacy sparse constructor (torch.sparse.*Tensor(indices, values, size)), "
                 "which torch.save never writes")


def _torch_keywords(call: Call) -> bool:
    """Whether NEWOBJ_EX gives a torch class keyword arguments. ``torch.Tensor(cdata=N)``
    and the legacy typed tensors take N as the address of a tensor to adopt, and
    ``UntypedStorage(n, allocator=N)`` as the address of an allocator to call: a pickle
    of allowed names reads and calls through any address it likes."""
    func = call.func
    if not (isinstance(func, Global) and func.effective.startswith("torch.")):
        return False
    return not (isinstance(call.kwargs, SymDict) and not call.kwargs.items)


# numpy's array classes, whose constructors take a buffer as the array's memory.
_ARRAY_CLASSES = frozenset(
    f"numpy.{name}" for name in ("ndarray", "core.multiarray.ndarray",
                                 "_core.multiarray.ndarray", "matrix", "recarray", "memmap",
                                 "char.chararray", "ma.MaskedArray", "ma.core.MaskedArray"))


def _array_constructor(call: Call) -> bool:
    """Whether the call makes an array on a buffer by calling its class: numpy's own
    pickles pass the class to ``_reconstruct``, and ``ndarray((4,), 'O', b'A' * 32)``
    reads the file's bytes as object pointers. Arguments that cannot be read as a tuple
    count as a buffer."""
    if not (isinstance(call.func, Global) and call.func.effective in _ARRAY_CLASSES):
        return False
    if call.kwargs is not None and not (isinstance(call.kwargs, SymDict)
                                        and not call.kwargs.items):
        return True
    args = call.args
    return not isinstance(args, tuple) or (len(args) > 2 and args[2] is not None)


# numpy.dtype.__setstate__ takes a dtype's layout (fields, subarray, item size) and its flags
# from the state without checking them against each other: an object dtype whose flags say
# "no objects" makes arrays and scalars take raw bytes of the file for object pointers, and
# a field placed past the item reads and writes memory outside the array. A dtype state is
# accepted only when its layout is modelled here and matches: every field and subarray
# inside the item, made of dtypes that pass the same check, and the object flags set exactly
# when an object is held.
_OBJECT_FLAGS = 0x0B  # REFCOUNT | LIST_PICKLE | NEEDS_INIT: on every numpy pickle with objects
_POINTER_FLAGS = 0x07  # REFCOUNT | LIST_PICKLE | ITEM_IS_POINTER: never without objects
_PLAIN_TYPESTR = re.compile(r"[<>|=]?([?bBiufcmMOSUVa])(\d*)")
_FIXED_SIZES = {"?": 1, "b": 1, "B": 1, "m": 8, "M": 8, "O": 8}
_UNORDERED_KINDS = "?bBOSVa"  # numpy's own pickles of these say byte order '|'
_MAX_DTYPE_DEPTH = 32


def _dtype_state_problem(call: Call) -> str:
    """Why the numpy dtype this call makes is given a state numpy would take unchecked."""
    func = call.func
    if not isinstance(func, Global) or not (
            func.effective == "numpy.dtype" or func.effective.startswith("numpy.dtypes.")):
        return ""
    layout = _dtype_layout(call, 0)
    return layout if isinstance(layout, str) else ""


def _dtype_layout(value: object, depth: int) -> tuple[int, bool] | str:
    """(item size, holds objects) of a dtype the pickle builds, or why it cannot be trusted."""
    if depth > _MAX_DTYPE_DEPTH:
        return "a numpy dtype nested too deeply"
    if not (isinstance(value, Call) and isinstance(value.func, Global)
            and value.func.effective == "numpy.dtype"):
        return f"a numpy dtype field or subarray made of {render(value)[:80]}"
    if value.builds > 1:
        return ("BUILD is applied to one numpy dtype more than once (objects made in between "
                "see the first state's layout and flags)")
    ctor = value.args[0] if isinstance(value.args, tuple) and value.args else None
    plain = _PLAIN_TYPESTR.fullmatch(ctor) if isinstance(ctor, str) else None
    if plain is None:
        if value.builds == 0 and depth == 0:
            return ""  # numpy builds it from its argument alone
        return f"a numpy dtype made from {render(ctor)[:80]}, not a plain type string"
    kind, digits = plain.groups()
    size = _FIXED_SIZES.get(kind, int(digits) * (4 if kind == "U" else 1) if digits else -1)
    state = value.state
    if value.builds == 0:
        return (size, kind == "O") if size >= 0 else "a numpy dtype of unknown size"
    if not isinstance(state, tuple) or len(state) < 5:
        return "" if depth == 0 else "a numpy dtype field whose state numpy refuses"
    if len(state) > 9:
        return "a numpy dtype state of an unknown format"
    # numpy reads each length of state tuple with its own layout (descriptor.c setstate):
    # 5 is (endian, subarray, fields, elsize, alignment), 6 adds a version in front, 7 adds
    # names, 8 and 9 add flags (and metadata). Indices are taken per length, never assumed.
    old = len(state) < 8
    endian = state[0] if len(state) == 5 else state[1]
    subarray = state[1] if len(state) == 5 else state[2]
    names = state[3] if len(state) >= 7 else None
    fields = state[2] if len(state) == 5 else state[3] if len(state) == 6 else state[4]
    elsize = state[len(state) - 2] if old else state[5]
    flags = None if old else state[7]
    if kind in _UNORDERED_KINDS and endian != "|":
        # numpy stores the byte order as given: an object dtype marked '>' makes numpy
        # byte-swap the object pointers on a copy or cast (a crash on a real pickle's objects)
        return (f"a numpy dtype of kind {kind!r} given byte order {render(endian)[:8]}: numpy "
                "only makes these with '|', and a swapped object dtype swaps its pointers")
    if old:
        if subarray is not None or fields is not None or names is not None:
            return "an old-format numpy dtype state with fields or a subarray"
        if kind in "SUVa":
            if not isinstance(elsize, int) or isinstance(elsize, bool) or elsize < 0:
                return "a numpy dtype state with a bad item size"
            size = elsize
        return (size, kind == "O") if size >= 0 else "a numpy dtype of unknown size"
    if not isinstance(flags, int):
        return "a numpy dtype state whose flags are not an integer"
    if kind in "SUVa":
        if not isinstance(elsize, int) or elsize < 0:
            return "a numpy dtype state with a bad item size"
        size = elsize
    elif size < 0:
        return "a numpy dtype of unknown size"
    holds_objects = kind == "O"
    if (subarray is not None or names is not None or fields is not None) and kind != "V":
        return "a numpy dtype state gives fields or a subarray to a type that has none"
    if subarray is not None:
        part = _subarray_layout(subarray, size, depth)
        if isinstance(part, str):
            return part
        holds_objects = holds_objects or part
    if names is not None or fields is not None:
        part = _fields_layout(names, fields, size, depth)
        if isinstance(part, str):
            return part
        holds_objects = holds_objects or part
    if holds_objects and flags & _OBJECT_FLAGS != _OBJECT_FLAGS:
        return ("a numpy dtype holding objects whose state clears its object flags: arrays "
                "and scalars of it take raw bytes from the file for object pointers")
    if not holds_objects and flags & _POINTER_FLAGS:
        return ("a numpy dtype without objects is given object flags: numpy would treat its "
                "bytes as object pointers")
    return size, holds_objects


def _subarray_layout(subarray: object, size: int, depth: int) -> bool | str:
    if not (isinstance(subarray, tuple) and len(subarray) == 2):
        return "a numpy dtype subarray that is not (dtype, shape)"
    base, shape = subarray
    dims = (shape,) if isinstance(shape, int) else shape
    if not (isinstance(dims, tuple) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims)):
        return "a numpy dtype subarray with a bad shape"
    inner = _dtype_layout(base, depth + 1)
    if isinstance(inner, str):
        return inner
    count = 1
    for d in dims:
        count *= d
    if inner[0] * count > size:
        return "a numpy dtype subarray larger than its item: it reaches outside the array"
    return inner[1]


def _fields_layout(names: object, fields: object, size: int, depth: int) -> bool | str:
    if not (isinstance(names, tuple) and isinstance(fields, SymDict)
            and all(isinstance(n, str) for n in names)):
        return "numpy dtype fields that are not a tuple of names and a dict"
    specs = _field_specs(names, fields)
    if isinstance(specs, str):
        return specs
    holds_objects = False
    spans: list[tuple[int, int, bool]] = []
    for dtype, offset, title in specs:
        inner = _dtype_layout(dtype, depth + 1)
        if isinstance(inner, str):
            return inner
        if title is not None and inner[1]:
            # numpy tells a title's entry from a field by identity (NPY_TITLE_KEY): were
            # it taken for a field, its object pointers would be counted twice
            return "a titled numpy dtype field holding objects"
        if offset + inner[0] > size:
            return ("a numpy dtype field placed past the end of its item: it reads and "
                    "writes memory outside the array")
        # numpy refuses a dtype whose object field overlaps another field (its own
        # constructor says so): the other field's bytes would be written over the pointer
        for start, length, objects in spans:
            if (objects or inner[1]) and offset < start + length and start < offset + inner[0]:
                return ("numpy dtype fields that overlap an object field: writing one field "
                        "writes raw bytes over an object pointer")
        spans.append((offset, inner[0], inner[1]))
        holds_objects = holds_objects or inner[1]
    return holds_objects


def _field_specs(names: tuple[str, ...], fields: SymDict
                 ) -> list[tuple[object, int, str | None]] | str:
    """The (dtype, offset, title or None) of each named field, once each, or why the fields dict
    is not one numpy makes. numpy's pickle of a titled field (``np.dtype({'names': ...,
    'titles': ...})``) keys the same spec under the name and under its title: the title's
    entry must be that spec, so checking the named ones checks every entry."""
    by_key: dict[str, object] = {}
    for key, value in fields.items:
        if not isinstance(key, str) or key in by_key:
            return "numpy dtype fields that do not match their names"
        by_key[key] = value
    specs: list[tuple[object, int, str | None]] = []
    titles: set[str] = set()
    for name in names:
        spec = by_key.get(name)
        if not (isinstance(spec, tuple) and len(spec) in (2, 3) and isinstance(spec[1], int)
                and not isinstance(spec[1], bool) and spec[1] >= 0):
            return "a numpy dtype field that is not (dtype, offset)"
        title = spec[2] if len(spec) == 3 else None
        if len(spec) == 3:
            twin = by_key.get(title) if isinstance(title, str) else None
            if not (isinstance(title, str) and title not in names and title not in titles
                    and isinstance(twin, tuple) and len(twin) == 3 and twin[0] is spec[0]
                    and twin[1] == spec[1] and twin[2] == title):
                return "a titled numpy dtype field whose title entry is not the field's own"
            titles.add(title)
        specs.append((spec[0], spec[1], title))
    if len(set(names)) != len(names) or set(by_key) != set(names) | titles:
        return "numpy dtype fields that do not match their names"
    return specs


def _attribute_chain(g: Global) -> list[str]:
    """The names a dotted global's attribute walk could stand for, or [] for a plain name.

    ``find_class`` imports the module line and walks the name's dots as attributes
    (protocol 4+), so ``pathlib`` + ``os.system`` is ``os.system`` reached through what
    pathlib imported: every tail of the name (``os.system``, ``system``) could be a module
    or function of its own."""
    name = g.raw[len(g.module) + 1:]
    parts = name.split(".")
    if len(parts) < 2:
        return []
    return [".".join(parts[i:]) for i in range(len(parts) - 1)]


# Allowed constructors whose arguments size an allocation: (bytes per element, where the
# size is). "first": the first positional argument (an int, or for numpy a shape tuple);
# "ints": every int positional argument is a dimension (torch's legacy constructors,
# ``torch.Tensor(2, 3)``; a list argument is data, bounded by the file); "second": the
# shape argument of numpy's ``_reconstruct(cls, shape, dtype)``.
_SIZED: dict[str, tuple[int, str]] = {
    "builtins.bytes": (1, "first"), "builtins.bytearray": (1, "first"),
    "numpy.ndarray": (16, "first"),
    "numpy.core.multiarray._reconstruct": (16, "second"),
    "numpy._core.multiarray._reconstruct": (16, "second"),
    "torch.storage.UntypedStorage": (1, "ints"), "torch.storage.TypedStorage": (16, "ints"),
    "torch.Tensor": (16, "ints"),
}
# What a pickle may ask those constructors to allocate, in all (bytes, estimated with the
# widest element). Real checkpoints ask for nothing: numpy's arrays are reconstructed
# empty and filled by BUILD, tensors come from storages, bytes from their own data.
MAX_ALLOCATION = 64 << 20


def _sized(name: str) -> tuple[int, str] | None:
    found = _SIZED.get(name)
    if found is not None:
        return found
    module, _, attr = name.rpartition(".")
    if module in ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse") and (
            attr.endswith(("Storage", "Tensor")) and name in DEFAULT_ALLOWED):
        return (16, "ints")
    return None


def _judge_allocations(scan: FileScan, res: StreamResult, location: str) -> None:
    """Allowed constructors called with a size: ``bytes(10**12)`` runs no code but asks
    the loading process for a terabyte. Sizes are read from constant arguments; a size
    computed at load time (another call's result) cannot be bounded and is reported."""
    total = 0
    for call in res.calls:
        func = call.func
        if not isinstance(func, Global) or not isinstance(call.args, tuple):
            continue
        sized = _sized(func.effective)
        if sized is None:
            continue
        width, where = sized
        args = call.args
        if where == "ints":
            dims: list[object] = [a for a in args if isinstance(a, int) or _computed(a)]
        elif where == "second":
            dims = _shape(args[1]) if len(args) > 1 else []
        else:
            dims = _shape(args[0]) if args else []
        if any(_computed(d) for d in dims):
            scan.add("SH177", f"{func.effective} is called with a size computed at load time",
                     location=location, offset=call.offset, subject=func.effective,
                     payload=render(call))
            return
        count = 1
        for d in dims:
            count *= max(int(d), 0)  # type: ignore[call-overload]
            if count > MAX_ALLOCATION:
                break
        total += count * width if dims else 0
        if total > MAX_ALLOCATION:
            scan.add("SH177", f"{func.effective} is asked to allocate about {count * width} "
                     f"bytes (more than {MAX_ALLOCATION} in all)", location=location,
                     offset=call.offset, subject=func.effective, payload=render(call)[:200])
            return


def _shape(value: object) -> list[object]:
    """The dimensions a size argument spells: an int, or a tuple/list of ints."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int) or _computed(value):
        return [value]
    if isinstance(value, (tuple, list)) and all(
            (isinstance(v, int) and not isinstance(v, bool)) or _computed(v) for v in value):
        return list(value)
    return []


def _computed(value: object) -> bool:
    """A value only known at load time (another call's result, a computed name), except
    ``_codecs.encode``'s, which is bytes (how protocol 2 spells them), never a size."""
    if isinstance(value, Call) and isinstance(value.func, Global) and (
            value.func.effective == "_codecs.encode"):
        return False
    return isinstance(value, (Call, ComputedGlobal, Opaque))


def _misused_harmless(res: StreamResult) -> set[int]:
    """ids of the defaultdict globals used other than as ``defaultdict(factory)`` with a
    plain value-type factory: such a use is judged as any unlisted global."""
    misused: set[int] = set()
    for call in res.calls:
        func = call.func
        if isinstance(func, Global) and func.effective == DEFAULTDICT and not _plain_defaultdict(
                call):
            misused.add(id(func))
    return misused


def _plain_defaultdict(call: Call) -> bool:
    if call.opcode not in ("REDUCE", "NEWOBJ") or call.kwargs or call.state is not None:
        return False
    args = call.args
    if not isinstance(args, tuple) or len(args) > 1:
        return False
    return not args or args[0] is None or (
        isinstance(args[0], Global) and args[0].effective in DEFAULTDICT_FACTORIES)


def _persistent_problem(ref: PersistentRef, loader: Loader) -> str:
    pid = ref.pid
    if loader is Loader.PICKLE:
        return "asks for a persistent object, which plain pickle loading cannot supply"
    if loader is Loader.TORCHSCRIPT:
        return "" if isinstance(pid, (str, int)) or _typename(pid) == "storage" else (
            "persistent id is not a TorchScript tensor reference")
    if loader is Loader.TORCH_TAR:
        return _tar_persistent_problem(pid)
    typename = _typename(pid)
    if typename == "storage":
        expected = 5 if loader is Loader.TORCH_ZIP else 6
        if not isinstance(pid, tuple):
            return "storage reference that is not a tuple"
        if len(pid) != expected:
            return f"storage reference has {len(pid)} fields, torch expects {expected}"
        if not isinstance(pid[1], Global):
            return "storage reference whose type is not an imported storage class"
        return ""
    if typename == "module" and loader is Loader.TORCH_LEGACY:
        return ""  # legacy module-source record; the class itself is judged as a global
    return f"persistent id {render(pid)} is not a torch storage reference"


def _tar_persistent_problem(pid: object) -> str:
    """torch's tar reader looks a key up among the records it already read (``int(pid)``),
    or, for a tuple, compares the source of its first element with the recorded source and
    returns that element: no call on pickle-built data beyond ``int``. The element itself
    is built from globals judged on their own."""
    if isinstance(pid, int) and not isinstance(pid, bool):
        return ""
    if isinstance(pid, (str, bytes)):
        text = pid.decode("latin-1") if isinstance(pid, bytes) else pid
        if text.strip().lstrip("+-").isdigit() and text.isascii():
            return ""
        return f"persistent id {render(pid)} is not a key of the tar's storage records"
    if isinstance(pid, tuple) and len(pid) == 3:
        return ""
    return f"persistent id {render(pid)} is not a legacy tar reference"


def _typename(pid: object) -> str:
    if isinstance(pid, tuple) and pid:
        head = pid[0]
        if isinstance(head, bytes):
            return head.decode("latin-1")
        if isinstance(head, str):
            return head
    return ""
