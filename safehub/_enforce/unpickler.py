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
import importlib
import io
import pickle
import sys
from collections.abc import Callable
from typing import Any

from safehub._enforce.hooks import AttrPatch
from safehub.errors import UnsafeModel

__all__ = ["GlobalCheck", "canonical_global", "pickle_patches"]

# Raises for a global the active policies do not allow; None when nothing is enforced.
GlobalCheck = Callable[[str], None]
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


def _checked(module: str, name: str) -> tuple[str, str] | None:
    """The canonical (module, name) after the check, or None when nothing is enforced."""
    check = _check[0]
    if check is None:
        return None
    if not isinstance(module, str) or not isinstance(name, str):
        raise UnsafeModel("the pickle names a global with a non-string module or name",
                          fix="do not load this file")
    mod, attr = canonical_global(module, name)
    check(f"{mod}.{attr}")
    return mod, attr


def _resolve(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        if part == "<locals>":
            raise pickle.UnpicklingError(f"Can't get local attribute {name!r} on {module!r}")
        obj = getattr(obj, part)
    return obj


class RestrictedUnpickler(_pickle.Unpickler):
    """``pickle.Unpickler`` under enforcement: ``find_class`` resolves allowed names only."""

    def find_class(self, module: str, name: str) -> Any:
        checked = _checked(module, name)
        if checked is None:
            return super().find_class(module, name)
        return _resolve(*checked)

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
    return _resolve(*checked)


def _wrap(find_class: Callable[..., Any]) -> Callable[..., Any]:
    def find_class_checked(self: Any, module: str, name: str) -> Any:
        _checked(module, name)
        return find_class(self, module, name)

    setattr(find_class_checked, _WRAPPED, find_class)
    return find_class_checked


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


def pickle_patches() -> list[AttrPatch]:
    """The patches that route ``pickle``'s entry points through the check."""
    patches = [AttrPatch(owner, name, value)
               for owner in (pickle, _pickle)
               for name, value in (("load", load), ("loads", loads),
                                   ("Unpickler", RestrictedUnpickler))]
    patches.append(AttrPatch(pickle._Unpickler, "find_class", _python_find_class))

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
            elif own is None and getattr(cls, "find_class", None) is _pickle.Unpickler.find_class:
                # C's default find_class cannot be patched; give the subclass a checked one.
                patches.append(AttrPatch(cls, "find_class", _wrap(_pickle.Unpickler.find_class)))
    return patches
