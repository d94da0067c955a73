"""torch.hub's API, backed by safehub's policy, fetch and scan stages.

``import safehub as hub`` and call these as you would ``torch.hub``'s: same
names, same parameter names, order and defaults, plus a keyword-only
``policy=`` (a :class:`~safehub.policy.Policy`, preset name or path; None: the
default selection). Where torch.hub is unsafe by design the call shape stays and
the behaviour changes; each function's docstring lists the differences.

Cache: the same hub directory rules as torch.hub (:func:`get_dir`); safehub's
own cache is its ``safehub/`` subfolder, keyed by URL (files) and commit (repos).
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO

from safehub._fetch import location as _location
from safehub._fetch.http import Progress, ProgressCallback
from safehub.errors import FetchError, PolicyViolation, UnsafeModel
from safehub.policy import Policy

if TYPE_CHECKING:
    from safehub.fetch import OpenedFile
    from safehub.findings import FileReport

__all__ = ["download_url_to_file", "get_dir", "load_state_dict_from_url", "set_dir"]

PolicyArg = Policy | str | os.PathLike[str] | None
ProgressArg = bool | ProgressCallback


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
    - ``progress`` never draws: ``True`` reports through the ``safehub.fetch``
      logger, a callable receives :class:`~safehub.fetch.Progress` reports.
    """
    from safehub.fetch import Fetcher

    fetcher = Fetcher(policy, progress=_progress(progress))
    target = os.path.expanduser(dst)
    with fetcher.open_url(url, hash_prefix=hash_prefix) as opened:
        tmp = f"{target}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "xb") as out:
                shutil.copyfileobj(opened.file, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


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
    - ``progress`` never draws (see :func:`download_url_to_file`).
    """
    if not weights_only:
        raise PolicyViolation(
            "weights_only=False is refused: a full unpickle runs whatever code the file "
            "names", subject=url,
            fix="drop weights_only=False; if the checkpoint needs extra classes, allow those "
            "exact names in the policy's [scanner] allowed_globals",
            trail=["deny    load_state_dict_from_url: weights_only=False"])
    from safehub.fetch import Fetcher

    cache_dir = os.path.join(os.path.expanduser(model_dir), "safehub") if model_dir else None
    fetcher = Fetcher(policy, cache_dir=cache_dir, progress=_progress(progress))
    with fetcher.open_url(url, file_name=file_name, check_hash=check_hash) as opened:
        return _load_weights(opened, map_location)

# `load`, `list` and `help` (they run repo code, so they need the sandbox) come here.


def _load_weights(opened: OpenedFile, map_location: Any) -> dict[str, Any]:
    import pickle

    import torch

    allowed = _allowed_globals(opened.info.report)
    fh: BinaryIO = opened.file
    try:
        with torch.serialization.safe_globals(allowed):
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


def _allowed_globals(report: FileReport) -> list[Any]:
    """The objects for globals the policy allowed in this file (torch's safe_globals)."""
    import importlib

    found: list[Any] = []
    for finding in report.findings:
        if not finding.allowed_by or finding.rule_id != "SH101" or not finding.subject:
            continue
        parts = finding.subject.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            found.append((obj, finding.subject))
            break
    return found


def _progress(progress: ProgressArg) -> ProgressCallback | None:
    if callable(progress):
        return progress
    if not progress:
        return None
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

