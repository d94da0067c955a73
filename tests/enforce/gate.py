"""A harmless data class that blocks while it is being unpickled (for the thread tests)."""

from __future__ import annotations

import threading
from typing import Any

entered = threading.Event()
release = threading.Event()


class Gate:
    """Unpickling it signals ``entered`` and waits for ``release``."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        entered.set()
        if not release.wait(120):
            raise TimeoutError("the test never released the gate")
