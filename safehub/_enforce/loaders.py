"""The enforced loaders: what ``torch.load``, ``torch.jit.load``, ``torch.package`` and
``torch.hub`` do under :func:`safehub.enforce`.

Each takes the active policies (outermost first) and torch's original function. A
file is snapshotted once (:mod:`safehub._snapshot`); every policy scans that
snapshot and must allow it; the loader then reads the same snapshot. Globals beyond
torch's own allowlist reach torch's weights-only loader for this call only
(:mod:`safehub._hub.scoped_globals`), and only those every policy allowed.
"""

from __future__ import annotations

import contextlib
import keyword
import logging
import os
import pickle
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from safehub._hub.scoped_globals import scoped_globals
from safehub._hub.sparse_checks import sparse_checked
from safehub._policy.decide import FileRequest
from safehub._policy.policy import Policy
from safehub._snapshot import Snapshot
from safehub.errors import PolicyViolation, UnsafeModel
from safehub.findings import FileReport

__all__ = ["TORCHSCRIPT_READERS", "RefusedNativeLoader", "RefusedNativeUnpickler",
           "ScannedOnlyReader", "backport_for_mobile", "backport_for_mobile_to_buffer",
           "checked_dynamic_shapes", "exported_programs_refused", "flatbuffer_load",
           "jit_load", "lite_load", "package_importer_init", "refused_cache_artifacts",
           "refused_exported_program", "scan_snapshot", "snapshot_of", "torch_load",
           "weights_only_globals"]

log = logging.getLogger("safehub")

Policies = Sequence[Policy]


def distinct(policies: Policies) -> list[Policy]:
    """The policies, each object once, outermost first."""
    out: list[Policy] = []
    for policy in policies:
        if not any(policy is seen for seen in out):
            out.append(policy)
    return out


def snapshot_of(f: Any) -> Snapshot:
    """The one private copy of what the loader would read from ``f``."""
    if isinstance(f, (str, os.PathLike)):
        return Snapshot.of_path(f)
    if hasattr(f, "read"):
        return Snapshot.of_fileobj(f, name_of(f))
    raise TypeError(f"safehub enforcement loads a path or a binary file object, not "
                    f"{type(f).__name__}")


def name_of(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", "<file object>"))


def scan_snapshot(snap: Snapshot, name: str, policies: Policies,
                  repo: str | None = None) -> list[FileReport]:
    """Scan the snapshot under every policy; each must allow it (PolicyViolation if not)."""
    from safehub._scanner.entry import scan_file

    reports = []
    for policy in distinct(policies):
        with snap.open() as fh:
            report = scan_file(fh, name, options=policy.scan_options(repo))
        policy.check(FileRequest(report, repo))
        reports.append(report)
    return reports


def weights_only_globals(reports: Sequence[FileReport]) -> list[tuple[Any, str]]:
    """The extra globals for torch's weights-only loader that every report allowed."""
    from safehub._hub.safe_globals import torch_safe_globals

    per_report = [torch_safe_globals(report) for report in reports]
    if not per_report:
        return []
    common = set.intersection(*({name for _, name in pairs} for pairs in per_report))
    return [(obj, name) for obj, name in per_report[0] if name in common]


def _source(snap: Snapshot) -> Any:
    # torch reads a path with C stdio (fast); the memfd's /proc path reopens the snapshot.
    return snap.path if snap.path is not None else snap.open()


def torch_load(original: Callable[..., Any], policies: Policies, f: Any,
               map_location: Any = None, pickle_module: Any = None, *,
               weights_only: bool | None = None, mmap: bool | None = None,
               **pickle_load_args: Any) -> Any:
    """``torch.load`` under enforcement: snapshot, scan, decide, load weights-only."""
    name = name_of(f)
    if pickle_module is not None and pickle_module is not pickle:
        raise PolicyViolation(
            f"torch.load with pickle_module={getattr(pickle_module, '__name__', pickle_module)!r}"
            " is refused: a custom unpickler bypasses the weights-only loader",
            subject=name, fix="call torch.load without pickle_module",
            trail=["deny    enforce: custom pickle_module"])
    if weights_only is False:
        log.warning("%s: weights_only=False ignored under safehub enforcement", name)
    with snapshot_of(f) as snap:
        reports = scan_snapshot(snap, name, policies)
        if reports and reports[0].format == "torchscript":
            raise PolicyViolation("TorchScript archives are not loaded by torch.load under "
                                  "enforcement: their code would run here", subject=name,
                                  fix="convert it in the sandbox: safehub convert FILE")
        source = _source(snap)
        if mmap is None:
            # The snapshot is private and sealed: mapping it (copy-on-write) spares a
            # second copy of every tensor. torch maps only its zip format.
            mmap = reports[0].format == "torch-zip" if reports else False
        try:
            with scoped_globals(weights_only_globals(reports)), sparse_checked():
                return original(source, map_location=map_location, weights_only=True,
                                mmap=bool(mmap) and isinstance(source, str),
                                **pickle_load_args)
        except pickle.UnpicklingError as exc:
            raise UnsafeModel(f"torch's weights-only loader refused {name}: {exc}",
                              subject=name, fix="allow the exact harmless classes it needs in "
                              "the policy's [scanner] allowed_globals") from exc
        finally:
            if not isinstance(source, str):
                source.close()


def _refuse_torchscript(loader: str, name: str, policies: Policies) -> None:
    """Refuse a loader that runs TorchScript unless every policy allows TorchScript."""
    refused = [p.name for p in distinct(policies) if not p.scan_options().allow_torchscript]
    if refused:
        raise PolicyViolation(
            f"{loader} is refused under enforcement: a TorchScript archive carries "
            f"code that runs in this process (policy {', '.join(refused)} does not allow "
            "TorchScript)", subject=name,
            fix="convert it in the sandbox (safehub convert FILE) and load the tensors",
            trail=[f"deny    policy {n}: scanner.allow_torchscript = false" for n in refused])


# torch._C's functions that read a TorchScript archive and run its code (``__setstate__``,
# methods): every Python route to TorchScript (torch.jit.load, the mobile loaders, the
# bytecode backports, future ones) ends in one of them.
TORCHSCRIPT_READERS = (
    "import_ir_module", "import_ir_module_from_buffer",
    "_load_for_lite_interpreter", "_load_for_lite_interpreter_from_buffer",
    "_load_jit_module_from_file", "_load_jit_module_from_bytes",
    "_load_mobile_module_from_file", "_load_mobile_module_from_bytes",
    "_backport_for_mobile", "_backport_for_mobile_from_buffer",
    "_backport_for_mobile_to_buffer", "_backport_for_mobile_from_buffer_to_buffer",
)
_scanned = threading.local()  # depth of the scanned TorchScript loads this thread is in


@contextlib.contextmanager
def _reading_scanned_snapshot() -> Iterator[None]:
    _scanned.depth = getattr(_scanned, "depth", 0) + 1
    try:
        yield
    finally:
        _scanned.depth -= 1


class _StandIn:
    """Stands in for one of torch's callables (``key`` names it) under enforcement; its
    other attributes are the real one's."""

    def __init__(self, real: Any, key: str):
        self._real = real
        self._key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class ScannedOnlyReader(_StandIn):
    """Stands in for one of :data:`TORCHSCRIPT_READERS` under enforcement.

    It reads only inside a load that took the TorchScript rule (every policy allows
    TorchScript, the snapshot passed the scan, the reader gets the snapshot): a Python
    route to TorchScript that enforcement does not wrap is refused here, never run.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(_scanned, "depth", 0) > 0:
            return self._real(*args, **kwargs)
        subject = str(args[0]) if args and isinstance(args[0], (str, os.PathLike)) else \
            "<TorchScript archive>"
        raise PolicyViolation(
            f"{self._key} is refused under enforcement: it reads a TorchScript archive, "
            "whose code runs in this process, outside a load safehub scanned",
            subject=subject, fix="load it with torch.jit.load (refused unless the policy "
            "allows TorchScript), or convert it in the sandbox: safehub convert FILE",
            trail=["deny    enforce: TorchScript read outside a scanned load"])


def _load_scanned(loader: str, f: Any, policies: Policies,
                  call: Callable[[Any], Any]) -> Any:
    """Refuse unless TorchScript is allowed; else scan the snapshot and load it."""
    name = name_of(f)
    with snapshot_of(f) as snap:
        _refuse_torchscript(loader, name, policies)
        scan_snapshot(snap, name, policies)
        source = _source(snap)
        try:
            with _reading_scanned_snapshot():
                return call(source)
        finally:
            if not isinstance(source, str):
                source.close()


def jit_load(original: Callable[..., Any], policies: Policies, f: Any,
             map_location: Any = None, _extra_files: Any = None,
             _restore_shapes: bool = False) -> Any:
    """``torch.jit.load`` under enforcement: refused unless every policy accepts
    TorchScript and the scan of the snapshot passes; then loaded from the snapshot."""
    return _load_scanned("torch.jit.load", f, policies, lambda source: original(
        source, map_location, _extra_files, _restore_shapes))


def lite_load(original: Callable[..., Any], policies: Policies, f: Any,
              map_location: Any = None) -> Any:
    """``torch.jit.mobile._load_for_lite_interpreter``: the same rule as ``torch.jit.load``
    (a mobile archive's bytecode and ``__setstate__`` run at load)."""
    return _load_scanned("torch.jit.mobile._load_for_lite_interpreter", f, policies,
                         lambda source: original(source, map_location))


def flatbuffer_load(original: Callable[..., Any], policies: Policies, f: Any) -> Any:
    """``torch.jit.jit_module_from_flatbuffer``: the same rule as ``torch.jit.load``."""
    return _load_scanned("torch.jit.jit_module_from_flatbuffer", f, policies, original)


def backport_for_mobile(original: Callable[..., Any], policies: Policies, f_input: Any,
                        f_output: Any, to_version: int) -> Any:
    """``torch.jit.mobile._backport_for_mobile``: it loads the archive as TorchScript (its
    ``__setstate__`` runs) to rewrite it, so the same rule as ``torch.jit.load``."""
    return _load_scanned("torch.jit.mobile._backport_for_mobile", f_input, policies,
                         lambda source: original(source, f_output, to_version))


def backport_for_mobile_to_buffer(original: Callable[..., Any], policies: Policies,
                                  f_input: Any, to_version: int) -> Any:
    """``torch.jit.mobile._backport_for_mobile_to_buffer``: as :func:`backport_for_mobile`."""
    return _load_scanned("torch.jit.mobile._backport_for_mobile_to_buffer", f_input,
                         policies, lambda source: original(source, to_version))


def refused_exported_program(*args: Any, **kwargs: Any) -> Any:
    """``ExportedProgramDeserializer.deserialize`` under enforcement: always refused.

    An ExportedProgram (``torch.export.load``, ``load_pt2``, the models of an
    ``aoti_load_package`` archive) is code: torch evaluates its symbolic shapes with
    ``sympy.sympify`` (Python ``eval``) while loading, and its graph calls whatever its
    targets name under ``torch``. The scanner does not read it.
    """
    raise PolicyViolation(
        "loading an ExportedProgram is refused under enforcement: torch evaluates the "
        "file's shape expressions as Python (sympy.sympify) and runs the calls its graph "
        "names", subject="<ExportedProgram>", fix="load the model's weights (safetensors "
        "or a weights-only checkpoint) into a model built from trusted code",
        trail=["deny    enforce: ExportedPrograms are code"])


def exported_programs_refused(models_dir: str) -> Callable[..., Any]:
    """``torch.export.pt2_archive._package._load_exported_programs`` under enforcement.

    Every archive route to an ExportedProgram (``torch.export.load``, ``load_pt2``,
    ``aoti_load_package``) reads its models here, and reads each model's constants
    (``custom_obj_*`` go to TorchScript's native unpickler) before the deserializer: an
    archive with models is refused before any of it is read. One without (AOTInductor
    only) goes on, to the refusal of its native code.
    """

    def impl(original: Callable[..., Any], policies: Policies, archive_reader: Any,
             file_names: Sequence[str], *rest: Any, **kwargs: Any) -> Any:
        if any(str(name).startswith(models_dir) for name in file_names):
            refused_exported_program()
        return original(archive_reader, file_names, *rest, **kwargs)

    return impl


# What torch's own _dump_dynamic_shapes writes: a dimension's name, and its derived
# dimensions as ``a*name + b`` (sympy's spelling of the linear forms torch accepts).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
_DERIVED = re.compile(r"\s*(?:[0-9]{1,18}\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]{0,99})"
                      r"(?:\s*[-+]\s*[0-9]{1,18})?\s*\Z")


def checked_dynamic_shapes(original: Callable[..., Any], policies: Policies, spec: Any,
                           *rest: Any, **kwargs: Any) -> Any:
    """``torch._export.serde.dynamic_shapes._load_dynamic_shapes`` under enforcement.

    It evaluates every dimension name and derived expression of the spec with
    ``sympy.sympify`` (Python's ``eval``): only a plain name, and ``a*name + b`` of that
    name, are handed to it; anything else is refused.
    """
    dims = spec.get("dims") if isinstance(spec, dict) else getattr(spec, "dims", None)
    for name, info in dims.items() if isinstance(dims, dict) else [(dims, None)]:
        derived = info.get("derived") if isinstance(info, dict) else getattr(
            info, "derived", None)
        plain = isinstance(name, str) and bool(_NAME.match(name)) and \
            not keyword.iskeyword(name)
        for expr in derived if isinstance(derived, (list, tuple)) else ():
            match = _DERIVED.match(expr) if isinstance(expr, str) else None
            plain = plain and match is not None and match.group(1) == name
        if not plain:
            raise PolicyViolation(
                f"a dynamic shapes spec with dimension {str(name)[:80]!r} is refused under "
                "enforcement: torch evaluates its names and derived expressions as Python "
                "(sympy.sympify), and these are not a plain name and a*name + b",
                subject="<dynamic shapes spec>", fix="load only a spec torch wrote "
                "(_dump_dynamic_shapes): names, and derived dimensions a*name + b",
                trail=["deny    enforce: dynamic shapes expressions are evaluated"])
    return original(spec, *rest, **kwargs)


def refused_cache_artifacts(*args: Any, **kwargs: Any) -> Any:
    """``torch.compiler._cache.CacheArtifactManager.deserialize`` under enforcement
    (``torch.compiler.load_cache_artifacts``): always refused.

    The artifacts are compiled graphs, pickles and autotuning records that torch writes
    where their keys say (an absolute key is any path, the content any bytes) and that
    torch.compile later imports and unpickles as its own cache: nothing safehub can scan.
    """
    raise PolicyViolation(
        "loading compile cache artifacts is refused under enforcement: torch writes each "
        "artifact's bytes to the path its key names (any path) and later runs them as its "
        "own compiled code and pickles", subject="<cache artifacts>",
        fix="let torch.compile build its cache in this process",
        trail=["deny    enforce: compile cache artifacts are code"])


class RefusedNativeUnpickler(_StandIn):
    """Stands in for ``torch._C._pickle_load_obj`` under enforcement: TorchScript's native
    unpickler (it makes ``torch.classes`` objects and runs their native ``__setstate__``),
    whose only caller in torch reads an ExportedProgram archive's ``custom_obj_*``
    constants, which enforcement refuses. Reached another way it refuses too."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise PolicyViolation(
            f"{self._key} is refused under enforcement: it unpickles bytes with "
            "TorchScript's native unpickler (torch.classes objects and their __setstate__), "
            "which safehub does not restrict", subject="<TorchScript pickle>",
            fix="load tensors with torch.load (weights-only) or safetensors",
            trail=["deny    enforce: TorchScript's native unpickler"])


class RefusedNativeLoader(_StandIn):
    """Stands in for one of ``torch._C._aoti``'s loader classes under enforcement.

    AOTInductor packages (``torch._inductor.aoti_load_package``, ``torch.export.load`` of
    a .pt2 with compiled models, ``torch._export.aot_load``) dlopen a shared library from
    the file: native code that no scan can judge. Constructing one is always refused;
    its static helpers (reading a package's metadata) still work.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        subject = str(args[0]) if args else "<AOTInductor package>"
        raise PolicyViolation(
            f"{self._key} is refused under enforcement: an AOTInductor package loads a "
            "compiled shared library into this process, and native code cannot be scanned",
            subject=subject, fix="load the model's weights (safetensors or a weights-only "
            "checkpoint) into a model built from trusted code",
            trail=["deny    enforce: native code (AOTInductor) is never loaded"])


def package_importer_init(original: Callable[..., Any], policies: Policies, importer: Any,
                          file_or_buffer: Any, *rest: Any, **kwargs: Any) -> None:
    """``torch.package.PackageImporter(...)`` under enforcement: the package is scanned
    (its Python modules are findings) and must be allowed by every policy; it is then
    read from the snapshot."""
    import torch

    if isinstance(file_or_buffer, torch._C.PyTorchFileReader):
        raise PolicyViolation("PackageImporter over an open PyTorchFileReader is refused "
                              "under enforcement: its bytes cannot be scanned",
                              subject="<PyTorchFileReader>", fix="pass the package's path")
    name = name_of(file_or_buffer)
    with snapshot_of(file_or_buffer) as snap:
        scan_snapshot(snap, name, policies)
        # The reader keeps the snapshot alive for as long as the importer reads it.
        original(importer, snap.open(), *rest, **kwargs)
