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
- subclasses of either whose ``find_class`` is their own or a mixin's (now or later) get
  it wrapped, so the check runs before their own resolution;
- subclasses of the C unpickler that exist when enforcement starts (defined at import,
  before ``enforce()``) get :class:`CUnpicklerUnderEnforcement` put in as their base: their
  ``load`` runs the restricted pure-Python unpickler, since the C one's BUILD and
  NEWOBJ_EX cannot be intercepted.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import contextlib
import copyreg
import enum
import importlib
import io
import pickle
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, ClassVar

from safehub._enforce.hooks import AttrPatch, BasesPatch, CodePatch
from safehub._scanner.allowlist import SPARSE_CONSTRUCTORS
from safehub.errors import UnsafeModel

__all__ = ["GlobalCheck", "canonical_global", "pickle_patches"]

# Raises for a global the active policies do not allow; None when nothing is enforced.
# Returns True when some policy allowed the name only through a ``module.*`` wildcard.
GlobalCheck = Callable[[str], bool]
_check: list[GlobalCheck | None] = [None]
_WRAPPED = "_safehub_checked"
# The C unpickler type itself: ``_pickle.Unpickler`` names the restricted one under enforcement.
_C_UNPICKLER: Any = _pickle.Unpickler
_C_FIND_CLASS = vars(_C_UNPICKLER)["find_class"]


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
    """The legacy sparse constructors (``torch.sparse.FloatTensor(indices, values, size)``),
    refused as the scanner refuses them (SH108): torch builds the tensor unchecked, and
    ``torch.save`` never writes them."""
    raise UnsafeModel(
        "SH108 unchecked-state: the pickle builds a sparse tensor with a legacy sparse "
        "constructor, whose indices torch does not check: invalid ones make its first use "
        "read and write memory outside its data", subject="torch.sparse",
        fix="re-save the tensor with torch.save, or load the file only in the sandbox")


def _rebuild_sparse_checked(layout: Any, data: Any) -> Any:
    """torch's ``_rebuild_sparse_tensor``, then torch's own validation of the result.

    torch builds the sparse tensor unchecked and queues it on the process-wide
    ``torch._utils._sparse_tensors_to_validate``, which ``torch.load`` checks at its end
    only under ``torch.sparse.check_sparse_tensor_invariants`` (off by default) and a
    plain pickle load never empties. Invalid indices make the tensor's first
    ``to_dense()`` or ``coalesce()`` read and write memory outside its data. Here the
    indices are copied first (later opcodes writing into the file's index tensors cannot
    reach the sparse tensor), the tensor is taken off torch's queue and validated at once.
    """
    torch: Any = importlib.import_module("torch")
    utils: Any = importlib.import_module("torch._utils")
    if not isinstance(data, (tuple, list)):
        raise UnsafeModel("SH108 unchecked-state: the pickle gives torch's sparse rebuild "
                          f"{type(data).__name__} data, not a tuple", subject=_REBUILD_SPARSE,
                          fix="do not load this file")
    # The index tensors are the data's leading members (COO: indices; compressed:
    # compressed and plain indices), copied: a SETITEM writes into their storage. The
    # values follow, as a new tensor over the same data: a compressed tensor keeps the
    # very tensors it is given, so a BUILD on the file's values (Tensor.__setstate__ calls
    # set_) would shrink its values under its row pointers; writes into the data itself
    # stay inside it.
    count = 1 if layout is torch.sparse_coo else 2

    def own(i: int, d: Any) -> Any:
        if not isinstance(d, torch.Tensor) or i > count:
            return d
        return d.clone() if i < count else d.detach()

    data = tuple(own(i, d) for i, d in enumerate(data))
    tensor = utils._rebuild_sparse_tensor(layout, data)
    pending = utils._sparse_tensors_to_validate
    for i in range(len(pending) - 1, -1, -1):
        if pending[i] is tensor:
            del pending[i]
            break
    try:
        if tensor.layout is torch.sparse_coo:
            torch._validate_sparse_coo_tensor_args(
                tensor._indices(), tensor._values(), tensor.size(), tensor.is_coalesced(),
                check_pinning=False)
        else:
            row = tensor.layout in (torch.sparse_csr, torch.sparse_bsr)
            compressed = tensor.crow_indices() if row else tensor.ccol_indices()
            plain = tensor.col_indices() if row else tensor.row_indices()
            # First in int64: torch checks int32 row pointers in int32 arithmetic, where a
            # step that wraps around passes and its slice check reads past the plain
            # indices. Then as stored, for the int32 overflow checks.
            for pair in ((compressed.long(), plain.long()), (compressed, plain)):
                torch._validate_sparse_compressed_tensor_args(
                    *pair, tensor.values(), tensor.size(), tensor.layout,
                    check_pinning=False)
            # torch's check passes an empty block, and its kernels divide by the block
            # size (to_dense() dies of SIGFPE); to_sparse_bsr never makes one
            batch = compressed.dim() - 1
            if tensor.layout in (torch.sparse_bsr, torch.sparse_bsc) and \
                    0 in tuple(tensor.values().shape[batch + 1:batch + 3]):
                raise ValueError("a block of the values has a zero dimension")
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise UnsafeModel(
            "SH108 unchecked-state: the pickle builds a sparse tensor whose indices fail "
            f"torch's own validation ({str(exc)[:200]}): its first use would read and "
            "write memory outside its data", subject=_REBUILD_SPARSE,
            fix="do not load this file") from exc
    return tensor


def _rebuild_nested_checked(buffer: Any, sizes: Any, strides: Any, offsets: Any) -> Any:
    """torch's ``_rebuild_nested_tensor``, its metadata's shapes checked first.

    ``torch._nested_view_from_buffer`` reads each row's strides as wide as ``sizes`` before
    it compares the two shapes: a wider ``sizes`` reads past the strides tensor (heap bytes
    in its error message, a crash further on). Each component view is bounds-checked by
    torch itself once the shapes agree; the metadata is passed as contiguous copies.
    """
    torch: Any = importlib.import_module("torch")
    utils: Any = importlib.import_module("torch._utils")
    meta = (sizes, strides, offsets)
    if not (all(isinstance(m, torch.Tensor) and m.dtype is torch.int64
                and m.layout is torch.strided for m in meta)
            and sizes.dim() == 2 and strides.shape == sizes.shape
            and offsets.dim() == 1 and offsets.shape[0] == sizes.shape[0]):
        raise UnsafeModel(
            "SH108 unchecked-state: the pickle builds a nested tensor whose sizes, strides "
            "and offsets are not int64 tensors of matching shapes: torch reads its strides "
            "past their end", subject=_REBUILD_NESTED, fix="do not load this file")
    # Copies, contiguous: the nested tensor keeps the tensors it is given, and a later
    # SETITEM into the file's sizes would change its components after torch checked them.
    return utils._rebuild_nested_tensor(
        buffer, *(m.clone(memory_format=torch.contiguous_format) for m in meta))


_REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
_REBUILD_SPARSE = "torch._utils._rebuild_sparse_tensor"
_REBUILD_NESTED = "torch._utils._rebuild_nested_tensor"
# Allowed callables replaced by a checked version when a pickle imports them.
_CHECKED_CALLABLES: dict[str, Callable[..., Any]] = {
    _REBUILD_FROM_TYPE: _rebuild_from_type_checked, _REBUILD_SPARSE: _rebuild_sparse_checked,
    _REBUILD_NESTED: _rebuild_nested_checked}


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
            # numpy takes each entry's first member for a dtype without looking, and a
            # dtype compares equal to its string ('<i4'): the comparison below would pass
            # a string where numpy then reads a dtype's memory (copy() crashes)
            if not all(type(v) is tuple and len(v) in (2, 3) and isinstance(v[0], numpy.dtype)
                       and type(v[1]) is int for v in fields.values()):
                raise ValueError("fields")
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
        try:
            shown = repr(obj)
        except Exception:  # its repr reads the very fields that are wrong
            shown = "a dtype numpy cannot show"
        raise UnsafeModel(
            f"SH108 unchecked-state: the pickle gives a numpy dtype a state ({shown}, flags "
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


def _refuse_array_on_a_buffer(cls: Any, args: Any, kwargs: Any = None) -> None:
    """No numpy array class called on a buffer: numpy pickles arrays as ``_reconstruct``
    and a state, never by calling ``ndarray``.

    ``ndarray(shape, dtype, buffer)`` takes the buffer as the array's memory unchecked
    for an object dtype (``ndarray((4,), 'O', b'A' * 32)``): its elements are the file's
    bytes read as object pointers, dereferenced on first use (SH108). Arguments other than
    a tuple, and any keyword, count as a buffer.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None or not (isinstance(cls, type) and issubclass(cls, numpy.ndarray)):
        return
    plain = type(args) is tuple and (len(args) < 3 or args[2] is None) and (
        kwargs is None or (type(kwargs) is dict and not kwargs))
    if not plain:
        raise UnsafeModel(
            f"SH108 unchecked-state: the pickle calls the numpy array class "
            f"{cls.__module__}.{cls.__qualname__} on a buffer: ndarray(shape, dtype, buffer) "
            "takes the file's bytes as the array's memory (as object pointers for an object "
            "dtype); numpy pickles arrays through _reconstruct and a state",
            subject=f"{cls.__module__}.{cls.__qualname__}", fix="do not load this file")


def _call_replacement(original: Callable[..., Any], self: Any) -> None:
    """REDUCE and NEWOBJ under enforcement: the callable below its arguments checked."""
    if _check[0] is not None and len(self.stack) >= 2:
        _refuse_array_on_a_buffer(self.stack[-2], self.stack[-1])
    original(self)


def _instantiate_replacement(original: Callable[..., Any], self: Any, klass: Any,
                             args: Any) -> None:
    """INST and OBJ under enforcement: ``klass(*args)`` checked as REDUCE is."""
    if _check[0] is not None:
        _refuse_array_on_a_buffer(klass, args)
    original(self, klass, args)


def _newobj_ex_replacement(original: Callable[..., Any], self: Any) -> None:
    """NEWOBJ_EX under enforcement: :func:`_refuse_keyword_call` on its class and arguments."""
    if _check[0] is not None and len(self.stack) >= 3:
        _refuse_keyword_call(self.stack[-3], self.stack[-2], self.stack[-1])
    original(self)


def _refuse_keyword_call(cls: Any, args: Any, kwargs: Any) -> None:
    """``cls.__new__(cls, *args, **kwargs)``: no keyword arguments to a torch class, no
    numpy array on a buffer.

    ``torch.Tensor(cdata=N)`` and the legacy typed tensors adopt the tensor at address N,
    and ``UntypedStorage(n, allocator=N)`` calls through the allocator at address N: any
    address a pickle of allowed names likes (SH108; the scanner says the same). torch never
    pickles its classes with keywords.
    """
    _refuse_array_on_a_buffer(cls, args, kwargs)
    torch_base = _torch_class_in(cls)
    if torch_base is not None and not (type(kwargs) is dict and not kwargs):
        raise UnsafeModel(
            f"SH108 unchecked-state: the pickle passes keyword arguments to "
            f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')} "
            f"(NEWOBJ_EX), a {torch_base}: torch's constructors take raw memory "
            "addresses as keywords (Tensor(cdata=...), UntypedStorage(allocator=...)) "
            "and use them unchecked", subject="NEWOBJ_EX", fix="do not load this file")


def _copyreg_newobj_ex_checked(cls: Any, args: Any, kwargs: Any) -> Any:
    """``copyreg.__newobj_ex__`` (NEWOBJ_EX as a function, for a policy that allows it)."""
    _refuse_keyword_call(cls, args, kwargs)
    return copyreg.__newobj_ex__(cls, args, kwargs)  # type: ignore[attr-defined]


def _copyreg_newobj_checked(cls: Any, *args: Any) -> Any:
    """``copyreg.__newobj__`` (NEWOBJ as a function, for a policy that allows it)."""
    _refuse_array_on_a_buffer(cls, args)
    return copyreg.__newobj__(cls, *args)  # type: ignore[attr-defined]


_CHECKED_CALLABLES.update({"copyreg.__newobj_ex__": _copyreg_newobj_ex_checked,
                           "copyreg.__newobj__": _copyreg_newobj_checked})


def _torch_class_in(cls: Any) -> str | None:
    """The torch class ``cls`` is or derives from (its ``__new__`` may be torch's: a tensor
    subclass another library defines takes ``cdata=`` too), else None."""
    for klass in getattr(cls, "__mro__", None) or (cls,):
        module = str(getattr(klass, "__module__", None) or "")
        if module == "torch" or module.startswith("torch."):
            return f"{module}.{getattr(klass, '__qualname__', '?')}"
    return None


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


setattr(_python_find_class, _WRAPPED, True)
setattr(RestrictedUnpickler.find_class, _WRAPPED, True)
def _find_checked(find_class: Callable[[str, str], Any], module: str, name: str) -> Any:
    """``find_class(module, name)`` after the name passed the check, the object after
    the wildcard check."""
    checked = _checked(module, name)
    obj = find_class(module, name)
    if checked is None:
        return obj
    if checked[2] and not _substitute(obj):
        defined_here(obj, checked[0], checked[1])
    return _checked_callable(checked[0], checked[1], obj)


def _substitute(obj: Any) -> bool:
    """One of safehub's checked callables (an inner find_class already substituted it)."""
    return isinstance(obj, types.FunctionType) and obj.__module__ == __name__


def _wrap(find_class: Callable[..., Any]) -> Callable[..., Any]:
    def find_class_checked(self: Any, module: str, name: str) -> Any:
        if isinstance(self, _C_UNPICKLER):
            _refuse_c_load(self)
        # As the class attribute would bind: a function, a staticmethod, C's descriptor.
        bind = getattr(find_class, "__get__", None)
        return _find_checked(find_class if bind is None else bind(self, type(self)),
                             module, name)

    setattr(find_class_checked, _WRAPPED, find_class)
    return find_class_checked


_reading = threading.local()  # .unpickler: the C unpickler the restricted one reads for


def _refuse_c_load(unpickler: Any) -> None:
    """Under enforcement a C unpickler's names resolve only for the restricted unpickler
    reading on its behalf (:class:`CUnpicklerUnderEnforcement`).

    Anything else asking is the C load itself, reached by a name bound before
    ``enforce()`` (``StockUnpickler.load(self)``, as dill's ``Unpickler.load`` does):
    its BUILD and NEWOBJ_EX cannot be checked, so it gets no global at all, and without
    globals a pickle makes only plain data.
    """
    if _check[0] is not None and getattr(_reading, "unpickler", None) is not unpickler:
        raise UnsafeModel(
            f"SH122 enforce-global-refused: {type(unpickler).__qualname__} runs the C "
            "pickle.Unpickler's own load (called through a name bound before enforce()), "
            "whose BUILD and NEWOBJ_EX safehub cannot check: under enforcement it resolves "
            "no global", subject=type(unpickler).__qualname__,
            fix="load through the unpickler's class (super().load()), or start enforcement "
            "before the program imports its unpicklers (sitecustomize.py)")


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


def _unchecked_find_class(cls: type) -> Any:
    """The ``find_class`` that ``cls`` resolves when it is not a checked one, else None.

    Its own, a mixin's (an unpickler whose own GLOBAL calls ``self.find_class`` reaches
    it without the import opcodes' check), or the C unpickler's.
    """
    if cls.__module__ == __name__:
        return None
    resolved = next(vars(k)["find_class"] for k in cls.__mro__ if "find_class" in vars(k))
    if getattr(resolved, _WRAPPED, None) or resolved is _pure_find_class:
        return None  # checked, or pickle._Unpickler's (replaced by a checked one)
    if resolved is _C_FIND_CLASS:
        # What the class resolves once CUnpicklerUnderEnforcement is its base.
        return CUnpicklerUnderEnforcement.find_class
    return resolved


def _guard_class(cls: type) -> None:
    resolved = _unchecked_find_class(cls)
    if resolved is not None:
        cls.find_class = _wrap(resolved)  # type: ignore[attr-defined]


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


_ARGS = "_safehub_unpickler_arguments"


class CUnpicklerUnderEnforcement(_C_UNPICKLER):  # type: ignore[misc]
    """The base put in under the C unpickler's subclasses that existed before enforcement.

    ``class AppUnpickler(pickle.Unpickler)`` executed at import binds the C type, whose
    BUILD and NEWOBJ_EX cannot be intercepted (``torch.Tensor(cdata=N)`` through
    NEWOBJ_EX adopts the tensor at address N; BUILD sets attributes on an allowed class).
    With this class between such a subclass and the C type, its ``__init__`` (also through
    ``super().__init__``) records the arguments, and its ``load`` reads the same file with
    the restricted pure-Python unpickler, resolving names through the instance's own
    ``find_class`` (checked there) and its ``persistent_load``.
    """

    __slots__ = ()  # the C type's layout: __bases__ can be reassigned both ways

    def __init__(self, file: Any, *, fix_imports: bool = True, encoding: str = "ASCII",
                 errors: str = "strict", buffers: Any = ()) -> None:
        arguments = {"fix_imports": fix_imports, "encoding": encoding, "errors": errors,
                     "buffers": buffers}
        _C_UNPICKLER.__init__(self, file, **arguments)
        # __slots__ without __dict__: nothing recorded, load refuses (fail closed)
        with contextlib.suppress(AttributeError):
            self.__dict__[_ARGS] = (file, arguments)

    def find_class(self, module: str, name: str) -> Any:
        """The C unpickler's resolution (protocol-2 renames, dotted names) in Python."""
        if _check[0] is None:
            return _C_FIND_CLASS(self, module, name)
        module, name = canonical_global(module, name)
        sys.audit("pickle.find_class", module, name)
        return _resolve(module, name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard_class(cls)  # a subclass made under enforcement, with its own find_class

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "find_class" and _check[0] is not None and callable(value):
            value = _instance_find_class(self, value)
        super().__setattr__(name, value)

    def load(self) -> Any:
        if _check[0] is None:
            return _C_UNPICKLER.load(self)
        recorded = getattr(self, "__dict__", {}).get(_ARGS)
        if recorded is None:
            raise UnsafeModel(
                f"{type(self).__qualname__} (a subclass of the C pickle.Unpickler) cannot load "
                "under enforcement: this unpickler was made before enforce(), or its class "
                "has no __dict__, so safehub cannot read its file with the restricted "
                "unpickler", subject=type(self).__qualname__,
                fix="create the unpickler after safehub.enforce() (sitecustomize.py does)")
        file, arguments = recorded
        inner = _OnBehalfOf(self, file, **arguments)
        memo = getattr(self, "memo", None)
        if memo is not None:
            inner.memo = dict(memo.copy())  # type: ignore[attr-defined]
        try:
            return inner.load()
        finally:
            self.memo = inner.memo  # type: ignore[attr-defined]


def _instance_find_class(unpickler: Any, find_class: Callable[..., Any]
                         ) -> Callable[[str, str], Any]:
    """A ``find_class`` set on a C unpickler's instance, as the C load would call it:
    checked, and only for the restricted unpickler reading on its behalf."""

    def find_class_checked(module: str, name: str) -> Any:
        _refuse_c_load(unpickler)
        return _find_checked(find_class, module, name)

    setattr(find_class_checked, _WRAPPED, find_class)
    return find_class_checked


class _OnBehalfOf(RestrictedUnpickler):
    """The restricted unpickler reading for a C unpickler's subclass: its names resolve
    through that unpickler's ``find_class`` (the import opcodes check them first), its
    persistent ids through its ``persistent_load``."""

    def __init__(self, outer: Any, file: Any, **arguments: Any):
        super().__init__(file, **arguments)
        self._outer = outer
        persistent_load = getattr(outer, "persistent_load", None)
        if persistent_load is not None:
            self.persistent_load = persistent_load  # type: ignore[method-assign]

    def find_class(self, module: str, name: str) -> Any:
        previous = getattr(_reading, "unpickler", None)
        _reading.unpickler = self._outer
        try:
            return self._outer.find_class(module, name)
        finally:
            _reading.unpickler = previous


def pickle_patches() -> list[AttrPatch | BasesPatch | CodePatch]:
    """The patches that route ``pickle``'s entry points through the check."""
    patches: list[AttrPatch | BasesPatch | CodePatch] = [AttrPatch(owner, name, value)
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
    # The other calls a pickle makes: REDUCE (func below its args), NEWOBJ (cls below its
    # args), INST and OBJ (through _instantiate).
    patches += [CodePatch(getattr(pickle._Unpickler, name), f"pickle._Unpickler.{name}",
                          _call_replacement) for name in ("load_reduce", "load_newobj")]
    patches.append(CodePatch(pickle._Unpickler._instantiate,  # type: ignore[attr-defined]
                             "pickle._Unpickler._instantiate", _instantiate_replacement))

    def init_subclass(cls: type, /, **kwargs: Any) -> None:
        _guard_class(cls)

    patches.append(AttrPatch(pickle._Unpickler, "__init_subclass__",
                             classmethod(init_subclass)))
    # Subclasses that exist already: a checked find_class in place of the one they resolve
    # (their own, a mixin's, the C unpickler's); the C unpickler's direct subclasses get
    # CUnpicklerUnderEnforcement as their base, so that every one of them loads through
    # the restricted unpickler.
    for base in (_C_UNPICKLER, pickle._Unpickler):
        for cls in _subclasses(base):
            resolved = _unchecked_find_class(cls)
            if resolved is not None:
                patches.append(AttrPatch(cls, "find_class", _wrap(resolved)))
            if base is _C_UNPICKLER and _C_UNPICKLER in cls.__bases__ and \
                    cls.__module__ != __name__:
                patches.append(BasesPatch(cls, tuple(
                    CUnpicklerUnderEnforcement if b is _C_UNPICKLER else b
                    for b in cls.__bases__)))
    return patches
