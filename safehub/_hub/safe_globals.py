"""What torch's weights-only unpickler must also accept to load a file safehub has scanned.

safehub's default allowlist includes numpy's array reconstruction, which torch's does
not; and a policy may allow more globals. After a scan passes, the same names are
handed to ``torch.serialization.safe_globals`` for that one load, so torch's loader
stays a second line of defence rather than a source of false refusals.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any

from safehub._scanner.harmless import DEFAULTDICT
from safehub.findings import FileReport

__all__ = ["allow_filled_defaultdicts", "allowed_global_names", "numpy_safe_globals",
           "resolve_global", "torch_safe_globals"]


def torch_safe_globals(report: FileReport) -> list[Any]:
    """Objects for torch's ``safe_globals``: what the scan allowed beyond torch's own set.

    That is numpy's array reconstruction (in safehub's default allowlist, not in
    torch's), the harmless data classes this file uses and the policy did not block
    (SH175: datetime, pathlib paths, argparse.Namespace, defaultdict of a value type, ...),
    and the globals the policy allowed in this file. Only names the scan saw in this file
    are added, so torch's loader stays as narrow as the scan.
    """
    names = allowed_global_names(report)
    if DEFAULTDICT in names:
        allow_filled_defaultdicts()
    pairs = (pair for pair in map(resolve_global, names) if pair is not None)
    return [*numpy_safe_globals(), *pairs]


_install_lock = threading.Lock()
_MARK = "_safehub_defaultdict_items"


def allow_filled_defaultdicts() -> None:
    """Let torch's weights-only unpickler fill a ``defaultdict`` whose default factory is a
    plain value type, as the scan accepts it (SH175).

    torch runs SETITEM(S) only on dict, OrderedDict and Counter, so without this every
    filled ``defaultdict(int)`` that the scan passes is refused by safehub's own load
    paths. Filling one is ``dict.__setitem__`` (the factory is not called), and the
    factory is checked again here, on the object torch built: only the value types of
    :data:`~safehub._scanner.harmless.DEFAULTDICT_FACTORIES` (or None) pass. torch's own
    check stays for everything else. The hook is process-wide but can only matter where
    ``collections.defaultdict`` is already an allowed global, since torch builds no
    defaultdict otherwise. A torch without the hook point keeps refusing (fail closed).
    """
    try:
        from torch import _weights_only_unpickler as wou
    except ImportError:
        return
    unpickler = getattr(wou, "Unpickler", None)
    original = getattr(unpickler, "_check_set_item_target", None)
    if unpickler is None or not callable(original):
        return
    with _install_lock:
        original = unpickler._check_set_item_target
        if getattr(original, _MARK, False):
            return
        factories = _value_factories()

        def check_set_item_target(self: Any, opcode: str) -> None:
            target = self.stack[-1] if self.stack else None
            if type(target) is collections.defaultdict and (
                    target.default_factory is None
                    or any(target.default_factory is f for f in factories)):
                return
            original(self, opcode)

        setattr(check_set_item_target, _MARK, True)
        unpickler._check_set_item_target = check_set_item_target


def _value_factories() -> tuple[Any, ...]:
    from safehub._scanner.harmless import DEFAULTDICT_FACTORIES

    return tuple(pair[0] for pair in map(resolve_global, sorted(DEFAULTDICT_FACTORIES))
                 if pair is not None)


def allowed_global_names(report: FileReport) -> list[str]:
    """The global names this file uses that the scan let through beyond the default
    allowlist: policy-allowed globals (SH101) and unblocked harmless data classes (SH175).
    Every loader of the file (in-process or in the sandbox) is handed exactly these."""
    return sorted({f.subject for f in report.findings if f.subject and (
        (f.allowed_by and f.rule_id == "SH101") or (f.rule_id == "SH175" and not f.blocking))})


@functools.lru_cache(maxsize=1)
def numpy_safe_globals() -> tuple[Any, ...]:
    """numpy's reconstruction functions and dtype classes, as (object, name) pairs.

    Resolved once per process: every weights-only load under safehub needs them.
    """
    from safehub._scanner.allowlist import DEFAULT_ALLOWED

    try:
        import numpy
    except ImportError:
        return ()
    numpy_names = [n for n in DEFAULT_ALLOWED if n.startswith("numpy.")]
    pairs = [pair for pair in map(resolve_global, numpy_names) if pair is not None]
    dtypes = getattr(numpy, "dtypes", None)
    for name in getattr(dtypes, "__all__", ()):
        pairs.append((getattr(dtypes, name), f"numpy.dtypes.{name}"))
    return tuple(pairs)


def resolve_global(name: str) -> tuple[Any, str] | None:
    """The object a dotted global names, imported the way the unpickler would, or None."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj, name
    return None
