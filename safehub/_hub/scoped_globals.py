"""Extra globals for torch's weights-only loader, visible to one call and nothing else.

torch offers ``add_safe_globals`` and the ``safe_globals`` context manager; both change
one process-wide set, so while one thread loads a checkpoint with a policy's extra
globals, a plain ``torch.load(weights_only=True)`` in another thread accepts them too.

Here the extras live in a :class:`contextvars.ContextVar` (one value per thread and per
asyncio task). torch's unpickler asks ``_get_user_allowed_globals()`` for the user's
set on every GLOBAL, NEWOBJ, REDUCE and BUILD; that function is wrapped once so that it
returns torch's own set plus the extras of the *calling* context. Threads that did not
enter :func:`scoped_globals` see exactly torch's set.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from safehub.errors import SafehubError

__all__ = ["resolve_globals", "scoped_globals"]

_extras: ContextVar[dict[str, Any] | None] = ContextVar("safehub_scoped_globals", default=None)
_install_lock = threading.Lock()
_MARK = "_safehub_scoped"


def _install() -> None:
    from torch import _weights_only_unpickler as wou

    with _install_lock:
        current = getattr(wou, "_get_user_allowed_globals", None)
        if current is None or not callable(current):
            # Fail closed: without the hook, extras could only be granted process-wide.
            raise SafehubError(
                "this torch version has no per-call hook for extra globals "
                "(torch._weights_only_unpickler._get_user_allowed_globals)",
                fix="load files that need no extra globals, or use a torch version safehub "
                "supports")
        if getattr(current, _MARK, False):
            return
        original = current

        def user_allowed_globals() -> dict[str, Any]:
            found: dict[str, Any] = original()
            extra = _extras.get()
            if extra:
                found = {**found, **extra}
            return found

        setattr(user_allowed_globals, _MARK, True)
        wou._get_user_allowed_globals = user_allowed_globals


@contextlib.contextmanager
def scoped_globals(pairs: Iterable[tuple[Any, str]]) -> Iterator[None]:
    """Let torch's weights-only loader accept ``(object, "module.name")`` pairs inside
    this ``with`` block, in this thread (context) only."""
    extra = {name: obj for obj, name in pairs}
    if not extra:
        yield
        return
    _install()
    outer = _extras.get()
    token = _extras.set({**(outer or {}), **extra})
    try:
        yield
    finally:
        _extras.reset(token)


def resolve_globals(names: Iterable[str]) -> list[tuple[Any, str]]:
    """``(object, name)`` for each dotted global name that resolves (as the unpickler would
    import it); names that do not resolve are left out (the load then fails closed)."""
    from safehub._hub.safe_globals import resolve_global

    return [pair for pair in map(resolve_global, names) if pair is not None]
