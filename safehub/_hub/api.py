"""torch.hub's API on safehub: the implementation behind :mod:`safehub.hub`.

The public module documents the API; the functions live here so that the private
packages (enforce's torch.hub patches) call them without importing the facade.

This module imports almost nothing at import time: a hub call on a local folder starts
its sandbox's zygote (seconds: a fresh interpreter importing torch) before the policy
engine and the fetch layer are imported (a few hundred milliseconds), so that both
overlap from the first instant of a process's first call.
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from safehub._fetch import location as _location
from safehub._namedfile import check_replaceable
from safehub.errors import FetchError, PolicyViolation, UnsafeModel

if TYPE_CHECKING:
    from safehub._fetch.fetcher import OpenedFile
    from safehub._fetch.http import Progress, ProgressCallback
    from safehub._policy.decide import TrustRepo
    from safehub._policy.policy import Policy

    PolicyArg = Policy | str | os.PathLike[str] | None
    ProgressArg = bool | ProgressCallback

__all__ = [
    "download_url_to_file",
    "get_dir",
    "help",
    "list",
    "load",
    "load_state_dict_from_url",
    "set_dir",
]


def get_dir() -> str:
    """The hub directory, by torch.hub's rules: :func:`set_dir` if called, else
    ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else
    ``~/.cache/torch/hub``.

    safehub keeps its cache in ``<get_dir()>/safehub``. ``set_dir`` here does not
    change ``torch.hub.get_dir()`` (nor the reverse).
    """
    return _location.get_dir()


def set_dir(d: str | os.PathLike[str]) -> None:
    """Use ``d`` (``~`` expanded) as the hub directory from now on, as torch.hub's."""
    _location.set_dir(d)


def download_url_to_file(url: str, dst: str, hash_prefix: str | None = None,
                         progress: ProgressArg = True, *, policy: PolicyArg = None) -> None:
    """Download ``url`` to ``dst``, as torch.hub's, but only what the policy allows.

    Differences from ``torch.hub.download_url_to_file``:

    - the URL is decided by the policy (https only, plain http only to loopback when
      the policy allows it; ``downloads.allowed_urls``; pins), and so is every
      redirect hop; timeouts, retries, a size cap and Range resume apply;
    - the file must have every digest that applies: ``hash_prefix`` (a SHA-256 or a
      prefix of one), the policy's pin, the lockfile's; a mismatch raises
      :class:`~safehub.errors.IntegrityError` and leaves ``dst`` untouched;
    - the file goes through the scanner and the scan through the policy before
      ``dst`` is written (:class:`~safehub.errors.PolicyViolation` when denied), so
      only model formats safehub can check are accepted;
    - the bytes come from safehub's URL-keyed cache (downloaded there first, verified
      on every use), then are copied to ``dst`` atomically (``.partial`` + rename);
    - ``progress=True`` draws a bar on stderr when stderr is a terminal (as torch.hub
      does) and otherwise reports through the ``safehub.fetch`` logger; a callable
      receives :class:`~safehub.fetch.Progress` reports and nothing is drawn;
    - ``dst`` must be a regular file or a new name: a device, FIFO, socket or folder
      there is refused before anything is downloaded (torch.hub's rename, as root,
      replaced ``/dev/null`` itself with the download).
    """
    from safehub._fetch.fetcher import Fetcher

    target = os.path.expanduser(dst)
    check_replaceable(target, what="download destination")
    fetcher = Fetcher(policy, progress=_progress(progress))
    with fetcher.open_url(url, hash_prefix=hash_prefix) as opened:
        write_atomically(opened.file, target)


def write_atomically(reader: BinaryIO, target: str) -> None:
    """Copy ``reader`` to ``target`` through a unique ``.partial`` file, fsync, rename."""
    tmp = f"{target}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "xb") as out:
            shutil.copyfileobj(reader, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        check_replaceable(target, what="download destination")  # again: it may have changed
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def progress_callback(progress: ProgressArg) -> ProgressCallback | None:
    """What ``progress=`` of torch.hub's signatures becomes (see :func:`_progress`)."""
    return _progress(progress)


def load_state_dict_from_url(url: str, model_dir: str | None = None,
                             map_location: Any = None, progress: ProgressArg = True,
                             check_hash: bool = False, file_name: str | None = None,
                             weights_only: bool = True, *, policy: PolicyArg = None
                             ) -> dict[str, Any]:
    """Download (once), verify, scan and load a checkpoint, as torch.hub's.

    The file that was hashed and scanned is loaded from the same open descriptor
    with ``torch.load(..., weights_only=True)``. Globals that the policy allows in
    ``[scanner] allowed_globals`` (and that the file uses) are made available to
    torch's weights-only unpickler for this call only.

    Differences from ``torch.hub.load_state_dict_from_url``:

    - ``weights_only`` defaults to ``True``, and ``False`` is refused with
      :class:`~safehub.errors.PolicyViolation`: a full unpickle executes whatever the
      file says. Allow the harmless classes a checkpoint needs in the policy instead;
    - the cache is keyed by URL, not by file name (two URLs with the same basename
      never collide): files live in ``<model_dir or get_dir()>/safehub/files/``,
      not ``<hub_dir>/checkpoints/<file_name>``; ``file_name`` only names the
      file for ``check_hash`` and for ``downloads.pins``;
    - the SHA-256 is checked on every use, cache hits included, against the policy's
      pin or the lockfile when there is one, and against torch's file-name prefix
      (``-<hex>.``) when ``check_hash`` is true; a cached file that changed is an
      :class:`~safehub.errors.IntegrityError`, not silently trusted;
    - the URL, every redirect and the scan result are decided by the policy (see
      :func:`download_url_to_file`); unscannable or unsafe files are refused;
    - torch's legacy single-file zip checkpoints (before PyTorch 1.6) are not
      extracted: convert them with a current ``torch.save``;
    - ``progress`` draws only on a terminal (see :func:`download_url_to_file`).
    """
    if not weights_only:
        raise PolicyViolation(
            "weights_only=False is refused: a full unpickle runs whatever code the file "
            "names", subject=url,
            fix="drop weights_only=False; if the checkpoint needs extra classes, allow those "
            "exact names in the policy's [scanner] allowed_globals",
            trail=["deny    load_state_dict_from_url: weights_only=False"])
    from safehub._fetch.fetcher import Fetcher

    cache_dir = os.path.join(os.path.expanduser(model_dir), "safehub") if model_dir else None
    fetcher = Fetcher(policy, cache_dir=cache_dir, progress=_progress(progress),
                      torch_model_dir=model_dir)
    with fetcher.open_url(url, file_name=file_name, check_hash=check_hash) as opened:
        return _load_weights(opened, map_location)

def load(repo_or_dir: str, model: str, *args: Any, source: str = "github",
         trust_repo: TrustRepo = "check", force_reload: bool = False, verbose: bool = True,
         skip_validation: bool = False, policy: PolicyArg = None, into: Any = None,
         seed: int | None = None, trust_nested: Sequence[str] | None = None,
         lockfile: str | os.PathLike[str] | None = None, frozen: bool = False,
         **kwargs: Any) -> Any:
    """Load a model from a torch.hub repository, running its code in the sandbox.

    ``repo_or_dir`` is ``owner/repo[:ref]`` (``source="github"``) or a folder with a
    ``hubconf.py`` (``source="local"``). The repository is decided by the policy,
    fetched as a verified read-only checkout (or used in place for local folders),
    checked against any signature the policy requires, and ``hubconf.py`` is
    imported and ``model(*args, **kwargs)`` called inside the sandbox. Weights the
    code downloads come through the policy, the fetch layer and the scanner.

    Returns the model's tensors as a :class:`~safehub._hub.structure.LoadedState`, a
    ``dict[str, torch.Tensor]``: the ``state_dict()`` when the entrypoint returns a
    module (a TorchScript module included: its weights). When it returns tuples,
    lists or dicts of modules, tensors and plain values, the keys are prefixed with
    the element's path (``0.weight`` for element 0 of a tuple, ``head.bias`` for
    the ``"head"`` entry of a dict), and ``.shape`` describes the structure:
    which prefix was which element, the plain values, and the leaves that could
    not cross (functions, classes, other objects) with the reason (``.dropped``).

    ``into=`` takes a module you built from trusted code, or the matching structure
    of modules and ``None`` (``into=(my_model, None)`` for an entrypoint returning
    ``(model, utils)``): each module is loaded with ``strict=False`` (missing and
    unexpected keys are logged as a warning) and the structure is returned, with
    ``None`` slots holding that element's tensors or value.

    ``seed`` seeds ``torch``, ``random`` and numpy in the sandbox before
    ``hubconf.py`` is imported, as ``torch.manual_seed(seed)`` before
    ``torch.hub.load`` would (random-init entrypoints then give torch.hub's values).

    ``trust_nested`` names the repositories (``owner/repo[:ref]``) the entrypoint
    may itself load with ``torch.hub.load`` during this call, trusted for this call
    only, as ``trust_repo=True`` would for the outer repo (the policy's pins and
    denials still apply).

    ``lockfile`` names a ``safehub.lock`` (written by ``safehub lock``) the call is
    verified against: a locked ref resolves to its locked commit, the checkout, the
    files the code downloads and a locked local folder must match their digests
    (a local folder then runs from a verified private copy); ``frozen=True`` also
    refuses any repository, download or folder the lockfile does not list.

    Differences from ``torch.hub.load``:

    - repo code never runs in your process, so what comes back is tensors, not the
      repo's model object; build the architecture yourself and pass ``into=``;
    - ``args``/``kwargs`` must be JSON values (None, bool, int, float, str, lists,
      string-keyed dicts): nothing crosses the sandbox boundary as a pickle;
    - trust comes from the policy: ``trust_repo=True`` trusts the repo for this call
      only where the policy honours it; ``None``, ``False`` and ``"check"`` never
      trust silently, and nothing prompts;
    - ``skip_validation`` is accepted and ignored: refs are always resolved to a full
      commit through the API (or the lockfile), never trusted from the cache name;
    - ``verbose`` is accepted and ignored: safehub never prints, it logs to the
      ``safehub`` logger, which the application configures;
    - keyword-only ``policy``, ``into``, ``seed``, ``trust_nested``, ``lockfile`` and
      ``frozen`` are safehub's;
      entrypoint keyword arguments with those names cannot be passed.
    """
    _start_early(repo_or_dir, source)
    from safehub._hub.runner import HubCall, run_hub_call
    from safehub._hub.structure import LoadedState, fill_into
    from safehub._sandbox.spec import Operation, check_json

    del skip_validation, verbose
    if isinstance(trust_nested, str):
        trust_nested = [trust_nested]
    trust_nested = trust_nested or ()
    call = HubCall(repo_or_dir, Operation.LOAD, model,
                   args=tuple(check_json(builtins.list(args), "args") or ()),  # type: ignore[arg-type]
                   kwargs=check_json(kwargs, "kwargs"),  # type: ignore[arg-type]
                   source=_source(source), trust_repo=trust_repo, force_reload=force_reload,
                   seed=seed, trust_nested=tuple(trust_nested),
                   lockfile=_lockfile_arg(lockfile), frozen=frozen)
    result = run_hub_call(call, policy)
    state = LoadedState(result.tensors, result.shape, result.torchscript)
    if into is None:
        return state
    if result.shape is None:
        return _load_into(into, state, f"{repo_or_dir}:{model}")
    return fill_into(into, result.shape, state, f"{repo_or_dir}:{model}")


def list(github: str, force_reload: bool = False, skip_validation: bool = False,
         trust_repo: TrustRepo = "check", verbose: bool = True, *, source: str = "github",
         policy: PolicyArg = None, lockfile: str | os.PathLike[str] | None = None,
         frozen: bool = False) -> builtins.list[str]:
    """The entrypoints of a repository's ``hubconf.py``, found by importing it in the sandbox.

    Differences from ``torch.hub.list``: ``hubconf.py`` is imported in the sandbox, not
    in your process (import-time code is contained); ``source="local"`` (keyword-only)
    lists a local folder; trust, ``lockfile``, ``frozen``, ``skip_validation`` and
    ``verbose`` as in :func:`load`.
    """
    _start_early(github, source)
    from safehub._hub.runner import HubCall, run_hub_call
    from safehub._sandbox.spec import Operation

    del skip_validation, verbose
    call = HubCall(github, Operation.LIST, source=_source(source), trust_repo=trust_repo,
                   force_reload=force_reload, lockfile=_lockfile_arg(lockfile), frozen=frozen)
    return builtins.list(run_hub_call(call, policy).entrypoints)


def help(github: str, model: str, force_reload: bool = False,
         skip_validation: bool = False, trust_repo: TrustRepo = "check", *,
         source: str = "github", policy: PolicyArg = None,
         lockfile: str | os.PathLike[str] | None = None, frozen: bool = False) -> str | None:
    """The docstring of one entrypoint, read by importing ``hubconf.py`` in the sandbox;
    ``None`` when it has none (as torch.hub's).

    Differences from ``torch.hub.help``: as for :func:`list`.
    """
    _start_early(github, source)
    from safehub._hub.runner import HubCall, run_hub_call
    from safehub._sandbox.spec import Operation

    del skip_validation
    call = HubCall(github, Operation.HELP, model, source=_source(source), trust_repo=trust_repo,
                   force_reload=force_reload, lockfile=_lockfile_arg(lockfile), frozen=frozen)
    return run_hub_call(call, policy).doc


def _start_early(repo_or_dir: object, source: object) -> None:
    """Start a local folder's zygote before the rest of the call is even imported (see
    :mod:`warm`); the call itself validates its arguments and reports any problem."""
    if source == "local" and isinstance(repo_or_dir, str):
        from safehub._hub.warm import prestart

        prestart(repo_or_dir, source)


def _lockfile_arg(lockfile: str | os.PathLike[str] | None) -> str | None:
    return None if lockfile is None else os.fspath(lockfile)


def _source(source: str) -> Literal["github", "local"]:
    if source not in ("github", "local"):
        raise ValueError(f'Unknown source: "{source}". Allowed values: "github" | "local".')
    return "github" if source == "github" else "local"


def _load_into(module: Any, tensors: dict[str, Any], subject: str) -> Any:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"into= must be a torch.nn.Module, not {type(module).__name__}")
    result = module.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        logging.getLogger("safehub").warning(
            "%s: loaded into %s with missing keys %s and unexpected keys %s", subject,
            type(module).__name__, result.missing_keys, result.unexpected_keys)
    return module




def _load_weights(opened: OpenedFile, map_location: Any) -> dict[str, Any]:
    import pickle

    import torch

    from safehub._hub.safe_globals import torch_safe_globals
    from safehub._hub.scoped_globals import scoped_globals
    from safehub._hub.sparse_checks import sparse_checked

    allowed = torch_safe_globals(opened.info.report)
    fh: BinaryIO = opened.file
    try:
        # Extra globals for this call (this thread) only, never process-wide.
        with scoped_globals(allowed), sparse_checked():
            result = torch.load(fh, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeModel(f"torch's weights-only loader refused the file: {exc}",
                          subject=opened.info.url, report=opened.info.report,
                          fix="allow the exact harmless classes it needs in [scanner] "
                          "allowed_globals, or obtain the weights as safetensors") from exc
    except (RuntimeError, ValueError, EOFError, OSError) as exc:
        raise FetchError(f"the downloaded file could not be loaded: {exc}",
                         subject=opened.info.url,
                         fix="check that the URL points at a PyTorch checkpoint") from exc
    return result  # type: ignore[no-any-return]


def _progress(progress: ProgressArg) -> ProgressCallback | None:
    if callable(progress):
        return progress
    if not progress:
        return None
    from safehub._progress import DownloadBars, on_terminal

    if on_terminal():  # as torch.hub: a bar on stderr, here only when it is a terminal
        return DownloadBars()
    import logging

    log = logging.getLogger("safehub.fetch")
    state: dict[str, int] = {}

    def report(p: Progress) -> None:
        step = max(p.total or 0, 64 << 20) // 4  # about four lines per download
        mark = p.done // step
        if p.done == p.total or mark > state.get(p.url, -1):
            state[p.url] = mark
            total = f" of {p.total}" if p.total else ""
            log.info("downloading %s: %d%s bytes", p.url, p.done, total)
    return report


# Public as safehub.hub.*: help() and tracebacks' callers see the public path.
for _fn in (get_dir, set_dir, download_url_to_file, load_state_dict_from_url, load, list, help):
    _fn.__module__ = "safehub.hub"
del _fn
