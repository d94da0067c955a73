"""Let ``safehub.scan(...)`` and ``safehub.enforce(...)`` work however they were imported.

``safehub.scan`` is both a module (``from safehub.scan import ScanOptions``) and the
function users call (``safehub.scan(paths)``). Importing the submodule makes the package
attribute the module, so the module is made callable and forwards to its function.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_module_callable"]


def make_module_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Calling the module ``module_name`` calls ``function``."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
