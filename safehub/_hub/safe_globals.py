"""What torch's weights-only unpickler must also accept to load a file safehub has scanned.

safehub's default allowlist includes numpy's array reconstruction, which torch's does
not; and a policy may allow more globals. After a scan passes, the same names are
handed to ``torch.serialization.safe_globals`` for that one load, so torch's loader
stays a second line of defence rather than a source of false refusals.
"""

from __future__ import annotations

import functools
from typing import Any

from safehub.findings import FileReport

__all__ = ["allowed_global_names", "numpy_safe_globals", "resolve_global", "torch_safe_globals"]


def torch_safe_globals(report: FileReport) -> list[Any]:
    """Objects for torch's ``safe_globals``: what the scan allowed beyond torch's own set.

    That is numpy's array reconstruction (in safehub's default allowlist, not in
    torch's), the harmless data classes this file uses and the policy did not block
    (SH175: datetime, pathlib paths, argparse.Namespace, defaultdict of a value type, ...),
    and the globals the policy allowed in this file. Only names the scan saw in this file
    are added, so torch's loader stays as narrow as the scan.
    """
    names = allowed_global_names(report)
    pairs = (pair for pair in map(resolve_global, names) if pair is not None)
    return [*numpy_safe_globals(), *pairs]


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
