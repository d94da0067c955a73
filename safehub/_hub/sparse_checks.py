"""torch's own validation of the sparse tensors a weights-only load builds.

torch builds sparse tensors from a checkpoint's indices unchecked and validates them at the
end of ``torch.load`` only under ``torch.sparse.check_sparse_tensor_invariants``, off by
default. safehub's scan checks the index data of the very bytes it then loads; its loads
also run under that setting, so torch checks them again once every opcode has run (a
second, independent check of anything a model of the pickle could miss).
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["sparse_checked"]


def sparse_checked() -> contextlib.AbstractContextManager[Any]:
    """A context in which ``torch.load`` validates the sparse tensors it builds."""
    import torch

    checks: Any = torch.sparse.check_sparse_tensor_invariants
    return checks(True)  # type: ignore[no-any-return]
