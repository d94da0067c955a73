"""Starting a hub call's sandbox before anything else, so its start overlaps the rest.

The zygote's start (a fresh interpreter importing torch and the packages the hubconf
declares) is the longest step of a first call. For a local folder everything it needs
is known at once (the hubconf's ``dependencies``, read with ``ast``), so it is started
before the caller imports the policy engine, loads the policy and checks the folder;
the repository's bytecode is compiled meanwhile too (compiling runs no repository
code). This module imports only what starting needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safehub._sandbox.supervisor import Sandbox

__all__ = ["prestart", "sandbox_for"]


def sandbox_for(repo_dir: Path) -> Sandbox:
    """The warm sandbox whose zygote preloaded this repo's declared, installed packages."""
    from safehub._hub.deps import preloadable_dependencies
    from safehub._sandbox.supervisor import default_sandbox

    try:
        packages = preloadable_dependencies(repo_dir)
    except OSError:
        packages = ()
    return default_sandbox(packages)


def prestart(repo_or_dir: str, source: str) -> Sandbox | None:
    """Start, in the background, the zygote and the bytecode a local folder's call will
    wait for; None for other sources (their tree is known only after the fetch).
    Idempotent; errors surface in the call itself."""
    from safehub._sandbox import bytecode

    if source != "local":
        return None
    repo = Path(os.path.expanduser(repo_or_dir))
    if not (repo / "hubconf.py").is_file():
        return None  # the call fails with the precise error; nothing to start
    sandbox = sandbox_for(repo)
    sandbox.start_in_background()
    bytecode.compile_in_background(os.path.abspath(repo))
    return sandbox
