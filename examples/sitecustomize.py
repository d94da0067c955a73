"""Protect every Python program in an environment: put this folder on PYTHONPATH
(or copy this file into site-packages) and torch.load, torch.hub, torch.jit.load,
torch.package and pickle's loaders (numpy, joblib, torch.distributed.checkpoint) go
through safehub. A program's own `with safehub.enforce(...)` scopes can only tighten
this process-wide enforcement; leaving them never switches it off.

The policy comes from $SAFEHUB_POLICY, [tool.safehub] in the nearest pyproject.toml, or
safehub's default preset. If enforcement cannot be set up, the program does not start:
Python would otherwise print a warning and run unprotected.
"""

try:
    import safehub

    safehub.enforce()
except Exception as exc:  # fail closed: never run unprotected
    raise SystemExit(f"safehub: enforcement could not be set up, refusing to run: {exc}") from exc
