"""The policy-driven restricted unpickler behind ``pickle``'s entry points under enforcement.

Every import a pickle makes goes through its unpickler's ``find_class`` (GLOBAL,
STACK_GLOBAL, INST, OBJ and the copyreg extension codes alike). Under enforcement a
name is resolved only when every active policy allows it: the scanner's default
allowlist (what rebuilding tensors, numpy arrays and plain containers needs) plus the
policy's ``[scanner] allowed_globals``. Anything else is refused before its module is
imported.

One interception point per unpickler family, so that numpy (``pickle.load``), joblib
(``pickle._Unpickler`` subclasses), ``torch.distributed.checkpoint`` (``pickle.load``)
and programs calling ``pickle`` directly all reach it:

- ``pickle.load``, ``pickle.loads``, ``pickle.Unpickler`` (and the same names in
  ``_pickle``) are replaced by functions and a subclass of the C unpickler whose
  ``find_class`` checks the name;
- ``pickle._Unpickler.find_class`` (the pure-Python unpickler, which joblib and
  ``pickle._load`` use) is replaced on the class, which reaches every subclass that
  does not define its own;
- subclasses of either that define ``find_class`` (now or later) get it wrapped, so the
  check runs before their own resolution.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import enum
import importlib
import io
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any, ClassVar

from safehub._enforce.hooks import AttrPatch, CodePatch
from safehub._scanner.allowlist import SPARSE_CONSTRUCTORS
from safehub.errors import UnsafeModel

__all__ = ["GlobalCheck", "canonical_global", "pickle_patches"]

# Raises for a global the active policies do not allow; None when nothing is enforced.
# Returns True when some policy allowed the name only through a ``module.*`` wildcard.
GlobalCheck = Callable[[str], bool]
_check: list[GlobalCheck | None] = [None]
_WRAPPED = "_safehub_checked"


def set_check(check: GlobalCheck | None) -> None:
    """Install (or, with None, remove) the check every restricted unpickler applies."""
    _check[0] = check


def canonical_global(module: str, name: str) -> tuple[str, str]:
    """The name as the unpickler imports it, after the protocol-2 renames."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _checked(module: str, name: str) -> tuple[str, str, bool] | None:
    """The canonical (module, name, allowed-by-wildcard) after the check, or None when
    nothing is enforced."""
    check = _check[0]
    if check is None:
        return None
    if not isinstance(module, str) or not isinstance(name, str):
        raise UnsafeModel("the pickle names a global with a non-string module or name",
                          fix="do not load this file")
    mod, attr = canonical_global(module, name)
    return mod, attr, bool(check(f"{mod}.{attr}"))


def _resolve(module: str, name: str, wildcard: bool = False) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        if part == "<locals>":
            raise pickle.UnpicklingError(f"Can't get local attribute {name!r} on {module!r}")
        obj = getattr(obj, part)
    if wildcard:
        defined_here(obj, module, name)
    return obj


def _rebuild_from_type_checked(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's ``_rebuild_from_type_v2``, only for tensors ``torch._utils`` rebuilds.

    It calls ``func(*args)`` and sets the state's attributes on the result, as BUILD
    would: torch pickles tensors this way (``func`` is one of ``torch._utils``'
    ``_rebuild_*``, which make a new tensor), while another allowed callable may return a
    process-wide object (an allowed enum class returns its member) that the state would
    rename and renumber for the whole process.
    """
    if not (getattr(func, "__module__", None) == "torch._utils"
            and str(getattr(func, "__name__", "")).startswith("_rebuild_")):
        raise UnsafeModel(
            f"SH105 global-mutation: the pickle asks {_REBUILD_FROM_TYPE} to set a state on "
            f"what {func!r} returns, not on a tensor torch._utils rebuilds: it could rewrite "
            "a process-wide object", subject=_REBUILD_FROM_TYPE, fix="do not load this file")
    rebuild: Any = importlib.import_module("torch._tensor")._rebuild_from_type_v2
    return rebuild(func, new_type, args, state)


def _rebuild_sparse_refused(*args: Any, **kwargs: Any) -> Any:
    """torch's ``_rebuild_sparse_tensor`` and the legacy sparse constructors, refused as the
    scanner refuses them (SH108).

    torch builds the sparse tensor unchecked and checks its indices afterwards only under
    ``torch.sparse.check_sparse_tensor_invariants`` (off by default): indices outside the
    tensor make its first ``to_dense()`` or ``coalesce()`` read and write memory outside
    its data. A pickle here has no end of load at which torch would check them.
    """
    raise UnsafeModel(
        "SH108 unchecked-state: the pickle builds a sparse tensor (torch's sparse rebuild "
        "function or a legacy sparse constructor), "
        "whose indices torch does not check: invalid ones make its first use read and "
        "write memory outside its data", subject=_REBUILD_SPARSE,
        fix="re-save the tensor dense (safetensors), or load the file only in the sandbox")


_REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
_REBUILD_SPARSE = "torch._utils._rebuild_sparse_tensor"
# Allowed callables replaced by a checked version when a pickle imports them.
_CHECKED_CALLABLES: dict[str, Callable[..., Any]] = {
    _REBUILD_FROM_TYPE: _rebuild_from_type_checked, _REBUILD_SPARSE: _rebuild_sparse_refused}


def _checked_callable(module: str, name: str, obj: Any) -> Any:
    full = f"{module}.{name}"
    if full.startswith(SPARSE_CONSTRUCTORS) and full.endswith("Tensor"):
        # torch.sparse.FloatTensor(indices, values, size): the same unchecked sparse tensor
        return _rebuild_sparse_refused
    return _CHECKED_CALLABLES.get(full, obj)


def defined_here(obj: Any, module: str, name: str) -> None:
    """A ``module.*`` allowance covers what ``module`` defines, never what it imports.

    ``torch.distributed.checkpoint.metadata.*`` must not reach ``dataclass`` or ``os``
    bound there by an import: classes and functions must have been defined in
    ``module``; modules and other callables are refused; of other values only immutable
    constants pass (never ``__dict__``, ``__builtins__`` or another existing object).
    """
    if isinstance(obj, types.ModuleType):
        owner: Any = obj.__name__
    elif isinstance(obj, (type, *_CODE_OBJECTS)):
        owner = getattr(obj, "__module__", None)
    elif callable(obj):
        owner = None
    elif _constant(obj):
        return
    else:
        # An existing object (the module's own namespace as ``__dict__``, the builtins dict
        # as ``__builtins__``, an enum member, a registry): SETITEMS, APPENDS or BUILD would
        # change it in place for the whole process (rebinding ``len`` in builtins).
        raise UnsafeModel(
            f"SH122 enforce-global-refused: the pickle imports {module}.{name}, an existing "
            f"{type(obj).__name__} object: a wildcard allowance {module}.* covers the "
            "classes and functions the module defines and its plain constants, never an "
            "object the pickle could change in place", subject=f"{module}.{name}",
            fix="do not load this file; if the object is really needed, allow its exact "
            "name in the policy's [scanner] allowed_globals")
    if isinstance(obj, types.ModuleType) or owner != module:
        raise UnsafeModel(
            f"SH122 enforce-global-refused: the pickle imports {module}.{name}, which a "
            f"wildcard allowance {module}.* names but {module} does not define (it is "
            f"{getattr(obj, '__module__', None) or type(obj).__name__}'s, imported there)",
            subject=f"{module}.{name}",
            fix="do not load this file; if the object is really needed, allow its defining "
            "module's exact name in the policy's [scanner] allowed_globals")


_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def _constant(obj: Any, depth: int = 0) -> bool:
    """Immutable plain data: scalars, and tuples or frozensets of them."""
    if type(obj) in _SCALARS:
        return True
    if type(obj) in (tuple, frozenset) and depth < 4:
        return all(_constant(item, depth + 1) for item in obj)
    return False


_CODE_OBJECTS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                 types.BuiltinMethodType, types.WrapperDescriptorType,
                 types.MethodDescriptorType, types.ClassMethodDescriptorType)


def _load_build_checked(self: Any) -> None:
    """BUILD under enforcement: never on a class, function, module or enum member.

    BUILD sets attributes on the object below it; on an imported class or function
    (``Counter.__annotations__``, ``_rebuild_tensor_v2.__defaults__``) that rewrites
    process-wide state, which no legitimate pickle does. An enum member is a
    process-wide singleton too (calling an allowed enum class returns it), and enums
    pickle without state.
    """
    if _check[0] is not None and len(self.stack) >= 2:
        inst = self.stack[-2]  # the state is on top, the object below it
        if isinstance(inst, (type, types.ModuleType, enum.Enum, *_CODE_OBJECTS)):
            what = (f"{type(inst).__qualname__}.{inst._name_}" if isinstance(inst, enum.Enum)
                    else str(getattr(inst, "__qualname__", None)
                             or getattr(inst, "__name__", "?")))
            raise UnsafeModel(
                f"the pickle sets attributes on {getattr(inst, '__module__', '')}.{what} "
                "(BUILD on a class, function, module or enum member): it would alter this "
                "process's code or shared state", subject=str(what), fix="do not load this file")
    _pure_load_build(self)
    if _check[0] is not None and self.stack:
        _check_dtype_state(self.stack[-1])


# What numpy.dtype.__setstate__ takes from the pickle unchecked, compared with what numpy
# computes for the same layout: REFCOUNT | LIST_PICKLE | ITEM_IS_POINTER | NEEDS_INIT.
_DTYPE_OBJECT_FLAGS = 0x0F


def _check_dtype_state(obj: object) -> None:
    """A numpy dtype after BUILD must be one numpy would make from its own layout.

    ``numpy.dtype.__setstate__`` takes flags, fields, subarray and item size from the
    pickle: an object dtype whose state clears its object flags makes arrays that take the
    file's raw bytes for object pointers, and a field past the item reaches memory outside
    the array, as does a title's entry that is not its field's own. The dtype is rebuilt from
    its layout (numpy checks offsets against the item size there) and must match, every
    fields key included.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(obj, numpy.dtype):
        return
    try:
        if obj.names is not None:
            fields = obj.fields
            fresh = numpy.dtype({"names": list(obj.names),
                                 "formats": [fields[n][0] for n in obj.names],
                                 "offsets": [fields[n][1] for n in obj.names],
                                 "titles": [fields[n][2] if len(fields[n]) > 2 else None
                                            for n in obj.names],
                                 "itemsize": obj.itemsize})
            # Every key, titles included: a title's entry is read as a field of its own
            # (arr["title"]), and the state may place it anywhere or add keys no name has.
            if fresh.fields != fields:
                raise ValueError("fields")
        elif obj.subdtype is not None:
            fresh = numpy.dtype(obj.subdtype)
        else:
            fresh = numpy.dtype(obj.str)
        # byte order too: numpy keeps the state's order even on an object dtype ('>O'),
        # and a copy or cast then byte-swaps its object pointers
        same = (fresh.itemsize == obj.itemsize and fresh.byteorder == obj.byteorder
                and fresh.flags & _DTYPE_OBJECT_FLAGS == obj.flags & _DTYPE_OBJECT_FLAGS)
    except (TypeError, ValueError, KeyError):
        same = False
    if not same:
        raise UnsafeModel(
            f"SH108 unchecked-state: the pickle gives a numpy dtype a state ({obj!r}, flags "
            f"{obj.flags}) that numpy's own layout rules do not produce: arrays of it would "
            "take raw bytes for object pointers or reach memory outside their data",
            subject="numpy.dtype", fix="do not load this file")


_build_fn: types.FunctionType = pickle._Unpickler.load_build  # type: ignore[attr-defined]
# A private copy: under enforcement the function object itself runs the check (its code is
# swapped), and the check must reach BUILD's own code without coming back to itself.
_pure_load_build = types.FunctionType(_build_fn.__code__, _build_fn.__globals__,
                                      _build_fn.__name__, _build_fn.__defaults__)
_BUILD = pickle.BUILD[0]
_newobj_ex_fn: types.FunctionType = pickle._Unpickler.load_newobj_ex  # type: ignore[attr-defined]


def _build_replacement(original: Callable[..., Any], self: Any) -> None:
    _load_build_checked(self)


def _newobj_ex_replacement(original: Callable[..., Any], self: Any) -> None:
    """NEWOBJ_EX under enforcement: no keyword arguments to a torch class.

    ``torch.Tensor(cdata=N)`` and the legacy typed tensors adopt the tensor at address N,
    and ``UntypedStorage(n, allocator=N)`` calls through the allocator at address N: any
    address a pickle of allowed names likes (SH108; the scanner says the same). torch never
    pickles its classes with keywords.
    """
    if _check[0] is not None and len(self.stack) >= 3:
        cls, kwargs = self.stack[-3], self.stack[-1]
        module = str(getattr(cls, "__module__", None) or "")
        if (module == "torch" or module.startswith("torch.")) and not (
                type(kwargs) is dict and not kwargs):
            raise UnsafeModel(
                f"SH108 unchecked-state: the pickle passes keyword arguments to {module}."
                f"{getattr(cls, '__qualname__', '?')} (NEWOBJ_EX): torch's constructors take "
                "raw memory addresses as keywords (Tensor(cdata=...), UntypedStorage("
                "allocator=...)) and use them unchecked", subject="NEWOBJ_EX",
                fix="do not load this file")
    original(self)


class RestrictedUnpickler(pickle._Unpickler):
    """``pickle.Unpickler`` under enforcement: ``find_class`` resolves allowed names only,
    and BUILD never targets a class, function or module.

    The pure-Python unpickler, because the C one's BUILD cannot be intercepted.
    """

    dispatch: ClassVar[dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)
    dispatch[_BUILD] = _load_build_checked

    def find_class(self, module: str, name: str) -> Any:
        checked = _checked(module, name)
        if checked is None:
            return _pure_find_class(self, module, name)
        sys.audit("pickle.find_class", checked[0], checked[1])
        return _checked_callable(checked[0], checked[1], _resolve(*checked))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard_class(cls)


def load(file: Any, *, fix_imports: bool = True, encoding: str = "ASCII",
         errors: str = "strict", buffers: Any = ()) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file, fix_imports=fix_imports, encoding=encoding,
                               errors=errors, buffers=buffers).load()


def loads(data: Any, /, *, fix_imports: bool = True, encoding: str = "ASCII",
          errors: str = "strict", buffers: Any = ()) -> Any:
    """``pickle.loads`` through :class:`RestrictedUnpickler`."""
    if isinstance(data, str):
        raise TypeError("Can't load pickle from unicode string")
    return RestrictedUnpickler(io.BytesIO(data), fix_imports=fix_imports, encoding=encoding,
                               errors=errors, buffers=buffers).load()


_pure_find_class = pickle._Unpickler.find_class


def _python_find_class(self: Any, module: str, name: str) -> Any:
    """``pickle._Unpickler.find_class`` under enforcement."""
    checked = _checked(module, name)
    if checked is None:
        return _pure_find_class(self, module, name)
    sys.audit("pickle.find_class", checked[0], checked[1])
    # The same checked callables as the C unpickler's subclass: pickle._loads and joblib.load
    # resolve through here.
    return _checked_callable(checked[0], checked[1], _resolve(*checked))


def _find_checked(find_class: Callable[[str, str], Any], module: str, name: str) -> Any:
    """``find_class(module, name)`` after the name passed the check, the object after
    the wildcard check."""
    checked = _checked(module, name)
    obj = find_class(module, name)
    if checked is None:
        return obj
    if checked[2]:
        defined_here(obj, checked[0], checked[1])
    return _checked_callable(checked[0], checked[1], obj)


def _wrap(find_class: Callable[..., Any]) -> Callable[..., Any]:
    def find_class_checked(self: Any, module: str, name: str) -> Any:
        # As the class attribute would bind: a function, a staticmethod, C's descriptor.
        bind = getattr(find_class, "__get__", None)
        return _find_checked(find_class if bind is None else bind(self, type(self)),
                             module, name)

    setattr(find_class_checked, _WRAPPED, find_class)
    return find_class_checked


class _CheckedImports:
    """The unpickler as its import opcodes see it: ``find_class`` checked, all else its own.

    Wrapping ``find_class`` per class misses one that is not in the class's own namespace
    (a mixin's, an instance attribute, one assigned after the class was made); the import
    opcodes of ``pickle._Unpickler`` are where every pure-Python unpickler resolves a name,
    whatever ``self.find_class`` turns out to be.
    """

    __slots__ = ("_unpickler",)

    def __init__(self, unpickler: Any):
        object.__setattr__(self, "_unpickler", unpickler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unpickler, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._unpickler, name, value)  # pop_mark rebinds stack and append

    def find_class(self, module: str, name: str) -> Any:
        return _find_checked(self._unpickler.find_class, module, name)


def _import_replacement(original: Callable[..., Any], self: Any, *args: Any) -> Any:
    if _check[0] is None:
        return original(self, *args)
    return original(_CheckedImports(self), *args)


# The opcodes of the pure-Python unpickler that call ``self.find_class``: GLOBAL,
# STACK_GLOBAL, INST and EXT1/2/4 (through get_extension).
_IMPORT_OPCODES: tuple[types.FunctionType, ...] = tuple(
    getattr(pickle._Unpickler, name)
    for name in ("load_global", "load_stack_global", "load_inst", "get_extension"))


def _guard_class(cls: type) -> None:
    own = vars(cls).get("find_class")
    if own is not None and not getattr(own, _WRAPPED, None):
        cls.find_class = _wrap(own)  # type: ignore[attr-defined]


def _subclasses(base: type) -> list[type]:
    found: list[type] = []
    todo: list[type] = list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def pickle_patches() -> list[AttrPatch | CodePatch]:
    """The patches that route ``pickle``'s entry points through the check."""
    patches: list[AttrPatch | CodePatch] = [AttrPatch(owner, name, value)
               for owner in (pickle, _pickle)
               for name, value in (("load", load), ("loads", loads),
                                   ("Unpickler", RestrictedUnpickler))]
    patches.append(AttrPatch(pickle._Unpickler, "find_class", _python_find_class))
    # BUILD's function object itself: pure-Python unpicklers reach it through the class's
    # dispatch table, through copies of that table taken when they were defined, and by
    # calling ``Unpickler.load_build(self)`` from their own BUILD (joblib's NumpyUnpickler
    # does both, whenever it was imported): swapping its code reaches every one of them.
    patches.append(CodePatch(_build_fn, "pickle._Unpickler.load_build", _build_replacement))
    # The import opcodes' function objects, for the same reason: every pure-Python
    # unpickler resolves names there, whichever find_class it ends up calling.
    patches += [CodePatch(fn, f"pickle._Unpickler.{fn.__name__}", _import_replacement)
                for fn in _IMPORT_OPCODES]
    # NEWOBJ_EX's the same way: keyword arguments to torch's constructors are addresses.
    patches.append(CodePatch(_newobj_ex_fn, "pickle._Unpickler.load_newobj_ex",
                             _newobj_ex_replacement))

    def init_subclass(cls: type, /, **kwargs: Any) -> None:
        _guard_class(cls)

    patches.append(AttrPatch(pickle._Unpickler, "__init_subclass__",
                             classmethod(init_subclass)))
    # Subclasses that exist already and define their own find_class.
    for base in (_pickle.Unpickler, pickle._Unpickler):
        for cls in _subclasses(base):
            if cls is RestrictedUnpickler or cls.__module__ == __name__:
                continue
            own = vars(cls).get("find_class")
            if own is not None and not getattr(own, _WRAPPED, None):
                patches.append(AttrPatch(cls, "find_class", _wrap(own)))
            elif own is None and base is _pickle.Unpickler:
                # The C opcodes call whatever find_class the class resolves: C's own
                # (which cannot be patched) or a mixin's. Give the subclass a checked one.
                resolved = next(vars(k)["find_class"] for k in cls.__mro__
                                if "find_class" in vars(k))
                if not getattr(resolved, _WRAPPED, None):
                    patches.append(AttrPatch(cls, "find_class", _wrap(resolved)))
    return patches
