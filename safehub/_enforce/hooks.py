"""Patches that every alias of a function reaches, and their exact undo.

``from torch import load`` binds the function object itself; replacing the module
attribute ``torch.load`` later does not reach that name. The function object is shared
by every alias, so its ``__code__`` is swapped instead: for the duration of the patch
the function runs a trampoline that calls safehub's implementation, which calls a
private copy of the original. Builtin functions and C types have no ``__code__`` and
fixed attributes: those are patched by module or class attribute (see SECURITY.md for
what that leaves uncovered).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

__all__ = ["DISPATCH", "AttrPatch", "BasesPatch", "CodePatch", "ItemPatch", "installed_original"]

# The name the trampolines look up in the patched function's module globals.
DISPATCH = "__safehub_enforce_dispatch__"
_MISSING = object()
# The installed CodePatches by key, so that safehub's own code can reach torch's original
# function (``installed_original``) without going through the enforcement facade.
_INSTALLED: dict[str, CodePatch] = {}


def installed_original(key: str) -> Callable[..., Any] | None:
    """The original of the function patched under ``key`` while that patch is installed."""
    patch = _INSTALLED.get(key)
    return patch.original if patch is not None else None


class CodePatch:
    """Route every call of the Python function ``fn`` to ``replacement(original, ...)``.

    ``original`` is a copy of ``fn`` as it was (same code, globals, defaults), so the
    replacement can call torch's implementation without coming back here.
    """

    def __init__(self, fn: types.FunctionType, key: str,
                 replacement: Callable[..., Any]):
        if not isinstance(fn, types.FunctionType) or fn.__closure__:
            raise TypeError(f"{key}: only plain module-level functions can be patched")
        self.fn = fn
        self.key = key
        self.original = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__,
                                           fn.__defaults__, fn.__closure__)
        self.original.__kwdefaults__ = fn.__kwdefaults__
        self.original.__dict__.update(fn.__dict__)
        self.original.__qualname__ = fn.__qualname__
        self.original.__module__ = fn.__module__
        self._saved = (fn.__code__, fn.__defaults__, fn.__kwdefaults__)
        self._signature = inspect.signature(fn)
        original = self.original

        def dispatch(*args: Any, **kwargs: Any) -> Any:
            return replacement(original, *args, **kwargs)

        self._dispatch = dispatch
        self._trampoline = _trampoline(fn, key)
        self.installed = False

    def install(self) -> None:
        table = self.fn.__globals__.setdefault(DISPATCH, {})
        table[self.key] = self._dispatch
        fn = self.fn
        fn.__defaults__ = None
        fn.__kwdefaults__ = None
        fn.__code__ = self._trampoline
        fn.__signature__ = self._signature  # type: ignore[attr-defined]
        self.installed = True
        _INSTALLED[self.key] = self

    def uninstall(self) -> None:
        if not self.installed:
            return
        fn = self.fn
        code, defaults, kwdefaults = self._saved
        fn.__code__ = code
        fn.__defaults__ = defaults
        fn.__kwdefaults__ = kwdefaults
        fn.__dict__.pop("__signature__", None)
        if _INSTALLED.get(self.key) is self:
            del _INSTALLED[self.key]
        # The dispatch entry stays: a call already inside the trampoline still finds it.
        self.installed = False


def _trampoline(fn: types.FunctionType, key: str) -> types.CodeType:
    source = (f"def trampoline(*args, **kwargs):\n"
              f"    return {DISPATCH}[{key!r}](*args, **kwargs)\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<safehub enforce: {key}>", "exec"), namespace)
    code: types.CodeType = namespace["trampoline"].__code__
    code = code.replace(co_name=fn.__code__.co_name)
    qualname = getattr(fn.__code__, "co_qualname", None)  # Python 3.11+
    if qualname is not None:
        code = code.replace(co_qualname=qualname)  # type: ignore[call-arg,unused-ignore]
    return code


class AttrPatch:
    """Set ``owner.name = value``; undo restores the old value (or removes the attribute
    when ``owner`` did not define it itself)."""

    def __init__(self, owner: Any, name: str, value: Any):
        self.owner = owner
        self.name = name
        self.value = value
        self._old = _MISSING
        self.installed = False

    def install(self) -> None:
        own = vars(self.owner) if isinstance(self.owner, type) else None
        if own is not None:
            self._old = own.get(self.name, _MISSING)
        else:
            self._old = getattr(self.owner, self.name, _MISSING)
        setattr(self.owner, self.name, self.value)
        self.installed = True

    def uninstall(self) -> None:
        if not self.installed:
            return
        if self._old is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self._old)
        self.installed = False


class ItemPatch:
    """Set ``table[key] = value`` (a dispatch table entry); undo restores the old one."""

    def __init__(self, table: dict[Any, Any], key: Any, value: Any):
        self.table = table
        self.key = key
        self.value = value
        self._old: Any = _MISSING
        self.installed = False

    def install(self) -> None:
        self._old = self.table.get(self.key, _MISSING)
        self.table[self.key] = self.value
        self.installed = True

    def uninstall(self) -> None:
        if not self.installed:
            return
        if self._old is _MISSING:
            self.table.pop(self.key, None)
        else:
            self.table[self.key] = self._old
        self.installed = False


class BasesPatch:
    """Set ``cls.__bases__`` (a base put in under an existing class); undo restores them."""

    def __init__(self, cls: type, bases: tuple[type, ...]):
        self.cls = cls
        self.bases = bases
        self._old = cls.__bases__
        self.installed = False

    def install(self) -> None:
        self.cls.__bases__ = self.bases
        self.installed = True

    def uninstall(self) -> None:
        if not self.installed:
            return
        self.cls.__bases__ = self._old
        self.installed = False
