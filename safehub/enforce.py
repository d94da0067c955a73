"""Protect unmodified programs: route torch's loaders through safehub's policy.

>>> import safehub
>>> safehub.enforce()            # policy: $SAFEHUB_POLICY, [tool.safehub], else default
>>> torch.load("model.pt")       # scanned, decided by the policy, then loaded weights-only

After :func:`enforce`:

- ``torch.load`` (and ``torch.serialization.load``) opens the file once, scans
  exactly those bytes, asks the policy, and loads them with torch's weights-only
  unpickler (plus the numpy reconstruction and the globals the policy allows). A
  ``pickle_module`` other than ``pickle`` is refused; ``weights_only=False`` is
  ignored (the file is loaded weights-only); TorchScript archives are refused
  in-process (convert them in the sandbox with ``safehub convert``).
- ``torch.hub.load_state_dict_from_url`` (and ``torch.utils.model_zoo.load_url``)
  and ``torch.hub.download_url_to_file`` go through :mod:`safehub.hub`: the URL
  and every redirect decided by the policy, pins checked, the file scanned.
- ``torch.hub.load``, ``list`` and ``help`` run the repository's code in the
  sandbox. ``torch.hub.load`` then returns the model's **state dict**, not the
  repo's model object (which would be the repo's code running in your process):
  build the model from trusted code and call ``load_state_dict``.

Process-wide, without touching the program (a ``sitecustomize.py`` on
``PYTHONPATH``)::

    import safehub
    safehub.enforce()

torch is not imported by :func:`enforce`: if it is not loaded yet, the patches are
applied the moment it is. :meth:`Enforcement.undo` restores torch's functions.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import pickle
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, BinaryIO

from safehub._callable_module import make_module_callable
from safehub.errors import PolicyViolation, UnsafeModel
from safehub.policy import FileRequest, Policy, load_policy

__all__ = ["Enforcement", "enforce"]

log = logging.getLogger("safehub")

_lock = threading.Lock()
_active: Enforcement | None = None


class Enforcement:
    """The patches one :func:`enforce` call installed; ``undo()`` removes them."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._saved: list[tuple[Any, str, Any]] = []
        self._finder: _TorchImportHook | None = None

    def __enter__(self) -> Enforcement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    @property
    def active(self) -> bool:
        return bool(self._saved) or self._finder is not None

    def undo(self) -> None:
        """Restore torch's own functions."""
        global _active
        with _lock:
            for owner, name, original in reversed(self._saved):
                setattr(owner, name, original)
            self._saved.clear()
            if self._finder is not None and self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
            self._finder = None
            if _active is self:
                _active = None

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _patch(self, torch: ModuleType) -> None:
        import torch.hub
        import torch.serialization
        import torch.utils.model_zoo

        from safehub import hub

        original_load = torch.serialization.load
        policy = self.policy

        def load(f: Any, map_location: Any = None, pickle_module: Any = None, *,
                 weights_only: bool | None = None, mmap: bool | None = None,
                 **pickle_load_args: Any) -> Any:
            return _checked_load(original_load, policy, f, map_location, pickle_module,
                                 weights_only, mmap, pickle_load_args)

        def load_state_dict_from_url(url: str, model_dir: str | None = None,
                                     map_location: Any = None, progress: bool = True,
                                     check_hash: bool = False, file_name: str | None = None,
                                     weights_only: bool = False) -> Any:
            del weights_only  # always weights-only, after the scan
            return hub.load_state_dict_from_url(url, model_dir, map_location, progress,
                                                check_hash, file_name, True, policy=policy)

        def download_url_to_file(url: str, dst: str, hash_prefix: str | None = None,
                                 progress: bool = True) -> None:
            hub.download_url_to_file(url, dst, hash_prefix, progress, policy=policy)

        def hub_load(repo_or_dir: str, model: str, *args: Any, **kwargs: Any) -> Any:
            return hub.load(repo_or_dir, model, *args, policy=policy, **kwargs)

        def hub_list(github: str, force_reload: bool = False, skip_validation: bool = False,
                     trust_repo: Any = "check", verbose: bool = True) -> list[str]:
            return hub.list(github, force_reload, skip_validation, trust_repo, verbose,
                            policy=policy)

        def hub_help(github: str, model: str, force_reload: bool = False,
                     skip_validation: bool = False, trust_repo: Any = "check") -> str:
            return hub.help(github, model, force_reload, skip_validation, trust_repo,
                            policy=policy)

        self._set(torch, "load", load)
        self._set(torch.serialization, "load", load)
        self._set(torch.hub, "load_state_dict_from_url", load_state_dict_from_url)
        self._set(torch.utils.model_zoo, "load_url", load_state_dict_from_url)
        self._set(torch.hub, "download_url_to_file", download_url_to_file)
        self._set(torch.hub, "load", hub_load)
        self._set(torch.hub, "list", hub_list)
        self._set(torch.hub, "help", hub_help)
        log.debug("safehub enforcement active (policy %s)", policy.name)


def enforce(policy: Policy | str | os.PathLike[str] | None = None) -> Enforcement:
    """Route torch.load and torch.hub through safehub's policy, process-wide.

    Returns the :class:`Enforcement` (a context manager; ``undo()`` restores
    torch). Calling it again replaces the previous enforcement.
    """
    global _active
    chosen = load_policy(policy)
    with _lock:
        previous = _active
    if previous is not None:
        previous.undo()
    enforcement = Enforcement(chosen)
    with _lock:
        _active = enforcement
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "serialization"):
            enforcement._patch(torch)
        else:
            enforcement._finder = _TorchImportHook(enforcement)
            sys.meta_path.insert(0, enforcement._finder)
    return enforcement


class _TorchImportHook(importlib.abc.MetaPathFinder):
    """Applies the patches right after ``import torch`` finishes (torch is heavy to import)."""

    def __init__(self, enforcement: Enforcement):
        self.enforcement = enforcement

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # find the real spec with the other finders
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None:
                for finder in sys.meta_path:
                    found = getattr(finder, "find_spec", None)
                    spec = found(fullname, path, target) if found else None
                    if spec is not None:
                        break
        finally:
            self.enforcement._finder = None
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module
        enforcement = self.enforcement

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            enforcement._patch(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _checked_load(original: Callable[..., Any], policy: Policy, f: Any, map_location: Any,
                  pickle_module: Any, weights_only: bool | None, mmap: bool | None,
                  pickle_load_args: dict[str, Any]) -> Any:
    from safehub._hub.safe_globals import torch_safe_globals
    from safehub.scan import scan_file

    if pickle_module is not None and pickle_module is not pickle:
        raise PolicyViolation(
            f"torch.load with pickle_module={getattr(pickle_module, '__name__', pickle_module)!r}"
            " is refused: a custom unpickler bypasses the weights-only loader",
            subject=_name(f), fix="call torch.load without pickle_module",
            trail=["deny    enforce: custom pickle_module"])
    if weights_only is False:
        log.warning("%s: weights_only=False ignored under safehub enforcement", _name(f))
    fh, owned = _open(f)
    try:
        report = scan_file(fh, _name(f), options=policy.scan_options())
        policy.check(FileRequest(report))
        if report.format == "torchscript":
            raise PolicyViolation("TorchScript archives are not loaded in-process under "
                                  "enforcement: their code would run here", subject=_name(f),
                                  fix="convert it in the sandbox: safehub convert FILE")
        import torch

        fh.seek(0)
        source: Any = fh
        if mmap and owned:
            # torch maps a path: give it our descriptor's path, so it maps what was scanned.
            source = f"/proc/self/fd/{fh.fileno()}"
        with torch.serialization.safe_globals(torch_safe_globals(report)):
            return original(source, map_location=map_location, weights_only=True, mmap=mmap,
                            **pickle_load_args)
    except pickle.UnpicklingError as exc:
        raise UnsafeModel(f"torch's weights-only loader refused {_name(f)}: {exc}",
                          subject=_name(f), fix="allow the exact harmless classes it needs in "
                          "the policy's [scanner] allowed_globals") from exc
    finally:
        if owned:
            fh.close()


def _open(f: Any) -> tuple[BinaryIO, bool]:
    if isinstance(f, (str, os.PathLike)):
        return open(os.fspath(f), "rb"), True
    if hasattr(f, "read") and hasattr(f, "seek"):
        return f, False
    raise TypeError(f"torch.load under safehub needs a path or a seekable binary file, not "
                    f"{type(f).__name__}")


def _name(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", "<file object>"))


# `import safehub.enforce` makes `safehub.enforce` this module: keep `safehub.enforce(...)` working.
make_module_callable(__name__, enforce)
