"""Protect unmodified programs: route every PyTorch and pickle loader through safehub's policy.

>>> import safehub
>>> safehub.enforce()            # policy: $SAFEHUB_POLICY, [tool.safehub], else default
>>> torch.load("model.pt")       # snapshotted, scanned, decided, then loaded weights-only

After :func:`enforce`:

- ``torch.load`` copies the file once into a private sealed snapshot, scans exactly
  those bytes, asks the policy, and loads the same snapshot with torch's weights-only
  unpickler (plus numpy's array reconstruction and the globals the policy allows, for
  that call only). A ``pickle_module`` other than ``pickle`` is refused;
  ``weights_only=False`` is ignored; TorchScript archives are refused.
- ``torch.jit.load`` and ``torch.package.PackageImporter`` run code stored in the file:
  refused, unless the policy allows TorchScript (``scanner.allow_torchscript``) and
  the scan of the snapshot passes (a package's Python modules are always findings).
  ``torch.jit.mobile._load_for_lite_interpreter``,
  ``torch.jit.jit_module_from_flatbuffer`` and the mobile bytecode backports follow the
  same rule; torch._C's TorchScript readers refuse outside a load that took it.
- AOTInductor packages (``torch._inductor.aoti_load_package``, ``torch.export.load`` of a
  .pt2 with compiled models, ``torch._export.aot_load``) load a shared library: always
  refused, at ``torch._C._aoti``'s loader classes.
- ExportedPrograms (``torch.export.load``, ``load_pt2``) are code (their shape
  expressions are evaluated as Python while loading): always refused, an archive before
  any of its models is read, patched when torch's modules are imported. A dynamic shapes
  spec (``_load_dynamic_shapes``) reaches ``sympy.sympify`` only as names and
  ``a*name + b``; compile cache artifacts (``torch.compiler.load_cache_artifacts``) are
  always refused.
- ``pickle.load``, ``pickle.loads``, ``pickle.Unpickler`` (and so ``numpy.load`` with
  ``allow_pickle=True``, ``joblib.load`` and ``torch.distributed.checkpoint``'s
  metadata) resolve only the globals every policy allows: the scanner's default
  allowlist plus ``[scanner] allowed_globals``; a ``module.*`` allowance reaches only
  what ``module`` defines, and BUILD never sets attributes on a class or function.
  Subclasses of the C unpickler defined before :func:`enforce` load through the same
  restricted unpickler.
- ``torch.hub.load_state_dict_from_url`` (``torch.utils.model_zoo.load_url``) and
  ``download_url_to_file`` go through :mod:`safehub.hub`: the URL and every redirect
  decided by the policy, pins checked, the file scanned.
- ``torch.hub.load``, ``list`` and ``help`` run the repository's code in the sandbox.
  ``torch.hub.load`` then returns the model's **state dict**, not the repo's model
  object: build the model from trusted code and call ``load_state_dict``.

Python functions are patched in their ``__code__``, so names bound before
:func:`enforce` (``from torch import load``) are covered too.

Enforcement only tightens: calls stack, and a load must satisfy every active policy.
Leaving a scope (``with safehub.enforce(p):`` or ``undo()``) removes that scope's
policy only; torch's own functions come back when no enforcement is left.

Process-wide, without touching the program (a ``sitecustomize.py`` on
``PYTHONPATH``)::

    import safehub
    safehub.enforce()

torch is not imported by :func:`enforce`: if it is not loaded yet, the torch patches
are applied the moment its import completes (a ``find_spec`` probe does not use them up).
Where torch is not installed (``pip install safehub`` without the ``safehub[torch]``
extra) the pickle loaders are still guarded, and torch's would be if it were imported
later; ``Enforcement.protects`` and ``waiting_for_torch`` say which, and the call logs it
(INFO on the ``safehub`` logger).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from safehub._callable_module import make_module_callable
from safehub._enforce.hooks import AttrPatch, BasesPatch, CodePatch
from safehub.errors import UnsafeModel
from safehub.policy import Policy, load_policy

__all__ = ["Enforcement", "enforce"]

log = logging.getLogger("safehub")

_lock = threading.RLock()


class Enforcement:
    """One :func:`enforce` call: its policy on the enforcement stack until ``undo()``."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._on_stack = False

    def __enter__(self) -> Enforcement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    @property
    def active(self) -> bool:
        """Whether this enforcement's policy still applies."""
        return self._on_stack

    @property
    def protects(self) -> tuple[str, ...]:
        """What this enforcement guards now: ``"pickle"`` (pickle.load/loads/Unpickler and
        the loaders built on them: numpy.load, joblib.load) and ``"torch"`` once torch is
        imported and patched; empty once undone. Without torch installed it stays
        ``("pickle",)``: torch's loaders are patched if torch is imported later."""
        if not self._on_stack:
            return ()
        return ("pickle", "torch") if _state.torch_patches else ("pickle",)

    @property
    def waiting_for_torch(self) -> bool:
        """True while torch's loaders are not patched because torch is not imported yet
        (or not installed: ``pip install 'safehub[torch]'``); they are patched the moment
        its import completes."""
        return self._on_stack and not _state.torch_patches

    def undo(self) -> None:
        """Remove this enforcement's policy. Other enforcements (an outer scope, the
        process-wide one from sitecustomize) stay in force; torch's own functions come
        back only when none is left."""
        _state.remove(self)


class _State:
    """The enforcement stack and the patches it keeps installed while it is not empty."""

    def __init__(self) -> None:
        self.stack: list[Enforcement] = []
        self.policies: tuple[Policy, ...] = ()
        self.allowed: tuple[tuple[str, ...], ...] = ()
        self.base_patches: list[AttrPatch | BasesPatch | CodePatch] = []
        self.torch_patches: list[CodePatch | AttrPatch] = []
        self.finder: _TorchImportHook | None = None
        self.late_finder: _LateImportHook | None = None
        self.late_done: set[str] = set()
        self.installing = False

    def push(self, enforcement: Enforcement) -> None:
        with _lock:
            self.stack.append(enforcement)
            enforcement._on_stack = True
            self._changed()
            if not self.base_patches:
                self._install_base()
            if not self.torch_patches and self.finder is None:
                torch = sys.modules.get("torch")
                if torch is not None and hasattr(torch, "serialization") and \
                        not _initializing(torch):
                    self.install_torch(torch)
                else:
                    self.finder = _TorchImportHook()
                    sys.meta_path.insert(0, self.finder)

    def remove(self, enforcement: Enforcement) -> None:
        with _lock:
            if enforcement in self.stack:
                self.stack.remove(enforcement)
            enforcement._on_stack = False
            self._changed()
            if not self.stack:
                self._uninstall()

    def _changed(self) -> None:
        self.policies = tuple(e.policy for e in self.stack)
        self.allowed = tuple(p.scan_options().allowed_globals for p in self.policies)

    def _install_base(self) -> None:
        # multiprocessing binds pickle.loads when it is imported: bind torch's and Python's
        # own first, so that inter-process traffic of this program is not restricted.
        import multiprocessing.reduction  # noqa: F401

        from safehub._enforce import unpickler

        patches = unpickler.pickle_patches()
        for patch in patches:
            patch.install()
        self.base_patches = patches
        unpickler.set_check(_check_global)

    def install_torch(self, torch: ModuleType) -> None:
        with _lock:
            if self.torch_patches or not self.stack or self.installing:
                return
            self.installing = True  # the patches import torch submodules: no re-entry
            try:
                self.torch_patches = _torch_patches(torch)
            finally:
                self.installing = False
            for patch in self.torch_patches:
                patch.install()
            if self.finder is not None and self.finder in sys.meta_path:
                sys.meta_path.remove(self.finder)
            self.finder = None
            self.late_finder = _LateImportHook()
            sys.meta_path.insert(0, self.late_finder)
            for name in _LATE_PATCHES:
                late = sys.modules.get(name)
                if late is not None and not _initializing(late):
                    self.install_late(late)
            log.debug("safehub enforcement active (policies %s)",
                      ", ".join(p.name for p in self.policies))

    def install_late(self, module: ModuleType) -> None:
        """Patch a torch module that ``import torch`` does not load (it just was)."""
        with _lock:
            if not self.torch_patches or module.__name__ in self.late_done:
                return
            patches = _LATE_PATCHES[module.__name__](module)
            for patch in patches:
                patch.install()
            self.torch_patches.extend(patches)  # undone with torch's
            self.late_done.add(module.__name__)

    def _uninstall(self) -> None:
        from safehub._enforce import unpickler

        unpickler.set_check(None)
        if self.late_finder is not None and self.late_finder in sys.meta_path:
            sys.meta_path.remove(self.late_finder)
        self.late_finder = None
        self.late_done.clear()
        for torch_patch in reversed(self.torch_patches):
            torch_patch.uninstall()
        for base_patch in reversed(self.base_patches):
            base_patch.uninstall()
        self.torch_patches = []
        self.base_patches = []
        if self.finder is not None and self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        self.finder = None


_state = _State()


def _policies() -> tuple[Policy, ...]:
    return _state.policies


def _check_global(name: str) -> bool:
    """Refuse a global that any active policy does not allow (the restricted unpickler).

    True when some policy allows it only through a ``module.*`` wildcard: the unpickler
    then checks that the object is defined in that module, not merely imported there.
    """
    from safehub._scanner.allowlist import DEFAULT_ALLOWED, allowed_reason

    wildcard = False
    for policy, extra in zip(_state.policies, _state.allowed, strict=True):
        if allowed_reason(name, extra) is None:
            raise UnsafeModel(
                f"SH122 enforce-global-refused: the pickle imports {name}, which policy "
                f"{policy.name} does not allow", subject=name,
                fix=f"if {name} is a harmless data class, allow this exact name in the "
                "policy's [scanner] allowed_globals; otherwise do not load this file")
        if name not in DEFAULT_ALLOWED and name not in extra:
            wildcard = True
    return wildcard


def enforce(policy: Policy | str | os.PathLike[str] | None = None) -> Enforcement:
    """Route torch's, torch.hub's and pickle's loaders through safehub's policy.

    Enforcement stacks: while several are active, every load must satisfy all of their
    policies (an inner scope can tighten, never loosen). Returns the
    :class:`Enforcement`, a context manager; ``undo()`` removes this one only.
    """
    enforcement = Enforcement(load_policy(policy))
    _state.push(enforcement)
    _finish_torch_import()
    _say_what_is_guarded(enforcement)
    return enforcement


def _finish_torch_import() -> None:
    """Patch torch now if another thread is importing it (a warm-up thread).

    Its spec was found before the import hook existed, so the hook never wraps it, and
    the patches would wait for some later import: until then torch.jit.load and
    torch.hub ran unguarded. Wait for that import as a second ``import torch`` would
    (the module's import lock; outside ``_lock``, which the importing thread's hook
    takes), then patch. In the importing thread itself the lock is not waited for.
    """
    torch = sys.modules.get("torch")
    if torch is None or _state.torch_patches or not _state.stack:
        return
    if not _initializing(torch):
        return
    wait = getattr(getattr(importlib, "_bootstrap", None), "_lock_unlock_module", None)
    if wait is not None:
        wait("torch")
    _install_if_imported()


def _say_what_is_guarded(enforcement: Enforcement) -> None:
    """Log what this call protects, so that enforcing without torch is never silent."""
    name = enforcement.policy.name
    if not enforcement.waiting_for_torch:
        log.info("safehub.enforce(%s): guarding pickle and torch loaders", name)
        return
    from safehub._torchdep import EXTRA, torch_available

    if torch_available():
        log.info("safehub.enforce(%s): guarding pickle loaders; torch's loaders are guarded "
                 "when torch is imported", name)
    else:
        log.info("safehub.enforce(%s): guarding pickle loaders (pickle, numpy.load, "
                 "joblib.load); torch is not installed, so torch.load and torch.hub are "
                 "guarded only if it is installed ('pip install %s') and imported later",
                 name, EXTRA)


class _TorchImportHook(importlib.abc.MetaPathFinder):
    """Applies the torch patches the moment ``import torch`` finishes.

    It stays first on ``sys.meta_path`` until torch is patched: a mere lookup
    (``importlib.util.find_spec("torch")``, as libraries probe for torch) must not
    consume it. Every spec found for ``torch`` gets its loader's ``exec_module``
    wrapped; a probe's spec is never executed, the real import's is. Any other lookup
    first checks whether torch finished importing through another route (a finder
    placed before this one) and patches it then.
    """

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if getattr(self._busy, "on", False):
            return None
        _install_if_imported()
        if fullname != "torch":
            return None
        spec = _find_spec_elsewhere(self, self._busy, fullname, path, target)
        if spec is not None and spec.loader is not None:
            _patch_after_exec(spec.loader, _state.install_torch)
        return spec


def _find_spec_elsewhere(finder: Any, busy: threading.local, fullname: str,
                         path: Sequence[str] | None,
                         target: ModuleType | None) -> importlib.machinery.ModuleSpec | None:
    """The spec the other finders on ``sys.meta_path`` find for ``fullname``."""
    busy.on = True
    try:
        for other in list(sys.meta_path):
            found = getattr(other, "find_spec", None)
            if other is finder or found is None:
                continue
            spec: importlib.machinery.ModuleSpec | None = found(fullname, path, target)
            if spec is not None:
                return spec
        return None
    finally:
        busy.on = False


def _refuse_exported_programs(serialize: ModuleType) -> list[AttrPatch | CodePatch]:
    from safehub._enforce import loaders

    return [AttrPatch(serialize.ExportedProgramDeserializer, "deserialize",
                      loaders.refused_exported_program)]


def _refuse_archived_programs(package: ModuleType) -> list[AttrPatch | CodePatch]:
    from safehub._enforce import loaders

    load = getattr(package, "_load_exported_programs", None)
    if load is None:  # another torch: the deserializer's refusal still stands
        return []
    return [CodePatch(load, "torch.export.pt2_archive._package._load_exported_programs",
                      _enforced(loaders.exported_programs_refused(
                          str(getattr(package, "MODELS_DIR", "models/")))))]


def _check_dynamic_shapes(module: ModuleType) -> list[AttrPatch | CodePatch]:
    from safehub._enforce import loaders

    load = getattr(module, "_load_dynamic_shapes", None)
    if load is None:
        return []
    return [CodePatch(load, "torch._export.serde.dynamic_shapes._load_dynamic_shapes",
                      _enforced(loaders.checked_dynamic_shapes))]


def _refuse_cache_artifacts(cache: ModuleType) -> list[AttrPatch | CodePatch]:
    from safehub._enforce import loaders

    manager = getattr(cache, "CacheArtifactManager", None)
    if manager is None or not hasattr(manager, "deserialize"):
        return []
    return [AttrPatch(manager, "deserialize", staticmethod(loaders.refused_cache_artifacts))]


# torch modules that ``import torch`` may not load, patched when they are imported (or
# with torch's patches when they already are).
# ExportedProgram deserialization (torch.export.load, load_pt2, aoti_load_package) evals
# the file's sympy expressions (sympy.sympify) and resolves call targets by name; the
# archive's models are refused before their constants are read. A dynamic shapes spec is
# evaluated with sympy.sympify too. Compile cache artifacts are written where their keys
# say and run later as torch.compile's own cache.
_LATE_PATCHES: dict[str, Callable[[ModuleType], list[AttrPatch | CodePatch]]] = {
    "torch._export.serde.serialize": _refuse_exported_programs,
    "torch.export.pt2_archive._package": _refuse_archived_programs,
    "torch._export.serde.dynamic_shapes": _check_dynamic_shapes,
    "torch.compiler._cache": _refuse_cache_artifacts,
}


def _initializing(module: ModuleType) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


class _LateImportHook(importlib.abc.MetaPathFinder):
    """Applies :data:`_LATE_PATCHES` the moment such a module's body has run."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _LATE_PATCHES or getattr(self._busy, "on", False):
            return None
        spec = _find_spec_elsewhere(self, self._busy, fullname, path, target)
        if spec is not None and spec.loader is not None:
            _patch_after_exec(spec.loader, _state.install_late)
        return spec


_WRAPPED_EXEC = "_safehub_enforce_exec"


def _patch_after_exec(loader: Any, then: Callable[[ModuleType], None]) -> None:
    """Make ``loader.exec_module`` call ``then(module)`` right after the module's body ran."""
    if getattr(loader, _WRAPPED_EXEC, False):
        return
    own = vars(loader).get("exec_module") if hasattr(loader, "__dict__") else None
    exec_module = loader.exec_module

    def exec_and_patch(module: ModuleType) -> None:
        try:
            if own is None:
                vars(loader).pop("exec_module", None)
            else:
                loader.exec_module = own
            vars(loader).pop(_WRAPPED_EXEC, None)
        except (AttributeError, TypeError):
            pass
        exec_module(module)
        then(module)

    try:
        loader.exec_module = exec_and_patch
        setattr(loader, _WRAPPED_EXEC, True)
    except (AttributeError, TypeError):
        # A loader that cannot be wrapped: the next lookup of any module patches torch.
        pass


def _install_if_imported() -> None:
    """Patch torch if it finished importing and enforcement still waits for it."""
    torch = sys.modules.get("torch")
    if torch is None or _state.torch_patches or not _state.stack:
        return
    spec = getattr(torch, "__spec__", None)
    if getattr(spec, "_initializing", False) or not hasattr(torch, "serialization"):
        return
    _state.install_torch(torch)


def _enforced(impl: Callable[..., Any]) -> Callable[..., Any]:
    """``impl(original, policies, ...)`` while enforcement is active, else the original."""

    def replacement(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        policies = _state.policies
        if not policies:
            return original(*args, **kwargs)
        return impl(original, policies, *args, **kwargs)

    return replacement


def _torch_patches(torch: ModuleType) -> list[CodePatch | AttrPatch]:
    import torch.hub
    import torch.jit
    import torch.jit._serialization
    import torch.jit.mobile
    import torch.package
    import torch.serialization

    from safehub._enforce import hub_calls, loaders

    patches: list[CodePatch | AttrPatch] = [
        CodePatch(torch.serialization.load, "torch.load", _enforced(loaders.torch_load)),
        CodePatch(torch.jit._serialization.load, "torch.jit.load", _enforced(loaders.jit_load)),
        CodePatch(torch.jit.mobile._load_for_lite_interpreter,
                  "torch.jit.mobile._load_for_lite_interpreter", _enforced(loaders.lite_load)),
        CodePatch(torch.jit._serialization.jit_module_from_flatbuffer,
                  "torch.jit.jit_module_from_flatbuffer", _enforced(loaders.flatbuffer_load)),
        CodePatch(torch.jit.mobile._backport_for_mobile,
                  "torch.jit.mobile._backport_for_mobile",
                  _enforced(loaders.backport_for_mobile)),
        CodePatch(torch.jit.mobile._backport_for_mobile_to_buffer,
                  "torch.jit.mobile._backport_for_mobile_to_buffer",
                  _enforced(loaders.backport_for_mobile_to_buffer)),
    ]
    # TorchScript's readers, where every Python route to them ends: outside a load that
    # took the TorchScript rule above they refuse.
    patches += [AttrPatch(torch._C, name, loaders.ScannedOnlyReader(
                    getattr(torch._C, name), f"torch._C.{name}"))
                for name in loaders.TORCHSCRIPT_READERS if hasattr(torch._C, name)]
    # TorchScript's native unpickler: torch's only caller reads an ExportedProgram's
    # constants (refused before that); reached any other way it refuses too.
    if hasattr(torch._C, "_pickle_load_obj"):
        patches.append(AttrPatch(torch._C, "_pickle_load_obj", loaders.RefusedNativeUnpickler(
            torch._C._pickle_load_obj, "torch._C._pickle_load_obj")))
    # AOTInductor: every Python route (aoti_load_package, torch.export.load, aot_load)
    # constructs one of these C classes through the module attribute.
    aoti = getattr(torch._C, "_aoti", None)
    for name in sorted(vars(aoti)) if aoti is not None else ():
        if name.startswith("AOTIModel") and isinstance(getattr(aoti, name), type):
            patches.append(AttrPatch(aoti, name, loaders.RefusedNativeLoader(
                getattr(aoti, name), f"torch._C._aoti.{name}")))
    for name, impl in (("load_state_dict_from_url", hub_calls.load_state_dict_from_url),
                       ("download_url_to_file", hub_calls.download_url_to_file),
                       ("load", hub_calls.hub_load), ("list", hub_calls.hub_list),
                       ("help", hub_calls.hub_help),
                       # private, but a program can call it: it imports hubconf.py here
                       ("_load_local", hub_calls.hub_load_local)):
        patches.append(CodePatch(getattr(torch.hub, name), f"torch.hub.{name}",
                                 _enforced(impl)))
    importer = torch.package.PackageImporter
    original_init = importer.__init__
    enforced_init = _enforced(loaders.package_importer_init)

    def package_init(self: Any, file_or_buffer: Any, *rest: Any, **kwargs: Any) -> None:
        enforced_init(original_init, self, file_or_buffer, *rest, **kwargs)

    patches.append(AttrPatch(importer, "__init__", package_init))
    return patches


# `import safehub.enforce` makes `safehub.enforce` this module: keep `safehub.enforce(...)` working.
make_module_callable(__name__, enforce)
