"""Judge what a pickle stream would do: allowlist first, knowledge base for severity."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum

from safehub._scanner import knowledge
from safehub._scanner.allowlist import DEFAULT_ALLOWED, TORCHSCRIPT_ALLOWED, matches
from safehub._scanner.context import FileScan
from safehub._scanner.harmless import DEFAULTDICT, DEFAULTDICT_FACTORIES, HARMLESS
from safehub._scanner.pickle_vm import (
    Call,
    ComputedGlobal,
    Global,
    Opaque,
    PersistentRef,
    StreamResult,
    render,
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


def judge_stream(scan: FileScan, res: StreamResult, location: str, loader: Loader) -> bool:
    """Add findings for one analyzed stream; returns True when the stream raised none."""
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
    _judge_allocations(scan, res, location)
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
