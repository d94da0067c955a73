"""``torch.hub``'s functions under enforcement, with torch.hub's signatures.

They run through :mod:`safehub.hub` with the innermost policy. When enforcements are
nested with different policies, the outer policies decide the same request first
(the URL, or the repository), a downloaded checkpoint must pass every policy's scan
before it is loaded, and repository code runs under the strictest sandbox settings of
all of them: a nested scope never loosens what an outer one refuses.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from safehub._enforce.loaders import distinct, scan_snapshot, weights_only_globals
from safehub._hub.runner import also_policies
from safehub._hub.scoped_globals import scoped_globals
from safehub._hub.sparse_checks import sparse_checked
from safehub._policy.decide import Requirement
from safehub._policy.policy import Policy
from safehub._snapshot import Snapshot
from safehub.errors import FetchError, IntegrityError, UnsafeModel

__all__ = ["download_url_to_file", "hub_help", "hub_list", "hub_load", "hub_load_local",
           "load_state_dict_from_url"]

Policies = Sequence[Policy]


def _outer_download_checks(policies: Policies, url: str, file_name: str | None
                           ) -> list[Requirement]:
    """Every outer policy must allow the download; returns the SHA-256 pins they require
    (the innermost policy's own are applied by the fetch layer)."""
    from safehub._policy.decide import DownloadRequest

    pins: list[Requirement] = []
    for policy in distinct(policies)[:-1]:
        decision = policy.check(DownloadRequest(url, file_name=file_name))
        pins += [r for r in decision.requirements if r.kind == "sha256"]
    return pins


def _require_outer_pins(pins: Sequence[Requirement], sha256: str, url: str,
                        policies: Policies) -> None:
    """The bytes about to be loaded or written have every outer policy's pin (the fetch
    layer was given them too; this checks the very bytes that leave)."""
    names = ", ".join(p.name for p in distinct(policies)[:-1])
    for pin in pins:
        if sha256 != pin.value.lower():
            raise IntegrityError(
                f"SH300 digest-mismatch: {url} has SHA-256 {sha256}, but {pin.rule} of an "
                f"outer enforce() policy ({names}) requires {pin.value}", subject=url,
                fix="do not use this file; if the publisher changed it on purpose, update "
                f"{pin.rule} after checking the new file")


def _outer_repo_checks(policies: Policies, repo_or_dir: str, source: str,
                       entrypoint: str | None, trust_repo: Any) -> None:
    from safehub._policy.decide import RepoRequest

    outer = distinct(policies)[:-1]
    if not outer:
        return
    if source == "local":
        request = RepoRequest(os.path.realpath(repo_or_dir), entrypoint=entrypoint,
                              source="local")
    else:
        from safehub._fetch.github import RepoSpec

        spec = RepoSpec.parse(repo_or_dir)
        request = RepoRequest(spec.repo, ref=spec.ref, entrypoint=entrypoint,
                              trust_repo=trust_repo)
    for policy in outer:
        policy.check(request)


def _strictest_sandbox(policies: Policies) -> Policy:
    """The innermost policy, with sandbox settings no looser than any active policy's.

    Repository code runs in one sandbox, so it gets every scope's limits at once: each
    limit the smallest, the required layers the union (the direction each field tightens
    in is the schema's own).
    """
    inner = policies[-1]
    if len(policies) == 1:
        return inner
    from safehub._policy.loader import LoadedPolicy
    from safehub._policy.schema import STRICTER, SandboxSection

    sections = [p.model.sandbox for p in policies]
    merged: dict[str, Any] = sections[-1].model_dump()
    for name, info in SandboxSection.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        direction = extra.get(STRICTER)
        values = [getattr(s, name) for s in sections]
        if direction == "lower":
            merged[name] = min(values)
        elif direction == "superset":
            merged[name] = sorted({item for value in values for item in value})
    base = inner._loaded
    loaded = LoadedPolicy(
        model=inner.model.model_copy(update={"sandbox": SandboxSection.model_validate(merged)}),
        chain=list(base.chain), provenance=dict(base.provenance), sources=dict(base.sources))
    return Policy(loaded, inner.selected_by)


def load_state_dict_from_url(original: Callable[..., Any], policies: Policies, url: str,
                             model_dir: str | None = None, map_location: Any = None,
                             progress: bool = True, check_hash: bool = False,
                             file_name: str | None = None, weights_only: bool = False) -> Any:
    """Always weights-only, after the scan (``weights_only`` is ignored)."""
    del original, weights_only
    from safehub._hub import api as hub

    chosen = distinct(policies)
    if len(chosen) == 1:
        return hub.load_state_dict_from_url(url, model_dir, map_location, progress,
                                            check_hash, file_name, True, policy=chosen[0])
    pins = _outer_download_checks(chosen, url, file_name)
    from safehub._fetch.fetcher import Fetcher

    cache_dir = os.path.join(os.path.expanduser(model_dir), "safehub") if model_dir else None
    fetcher = Fetcher(chosen[-1], cache_dir=cache_dir, also=chosen[:-1])
    # The fetch layer serves a private snapshot; it is copied once more here (the reader
    # is not a Snapshot), scanned under the outer policies, and loaded from those bytes.
    with fetcher.open_url(url, file_name=file_name, check_hash=check_hash) as opened, \
            Snapshot.of_fileobj(opened.file, url) as snap:
        _require_outer_pins(pins, snap.sha256, url, chosen)
        reports = [opened.info.report, *scan_snapshot(snap, url, chosen[:-1])]
        try:
            with scoped_globals(weights_only_globals(reports)), snap.open() as fh, \
                    sparse_checked():
                return _torch_load_original()(fh, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeModel(f"torch's weights-only loader refused the file: {exc}",
                              subject=url, fix="allow the exact harmless classes it needs "
                              "in [scanner] allowed_globals") from exc
        except (RuntimeError, ValueError, EOFError, OSError) as exc:
            raise FetchError(f"the downloaded file could not be loaded: {exc}",
                             subject=url, fix="check that the URL points at a PyTorch "
                             "checkpoint") from exc


def _torch_load_original() -> Callable[..., Any]:
    """torch's own ``torch.load`` (the file was scanned by every policy already)."""
    from safehub._enforce.hooks import installed_original

    original = installed_original("torch.load")
    if original is not None:
        return original
    import torch

    return torch.load


def download_url_to_file(original: Callable[..., Any], policies: Policies, url: str, dst: str,
                         hash_prefix: str | None = None, progress: bool = True) -> None:
    del original
    from safehub._hub import api as hub

    chosen = distinct(policies)
    if len(chosen) == 1:
        hub.download_url_to_file(url, dst, hash_prefix, progress, policy=chosen[0])
        return
    pins = _outer_download_checks(chosen, url, None)
    from safehub._fetch.fetcher import Fetcher

    # The fetch layer applies every policy (decisions, pins, redirect hops, scans); the
    # bytes written are the ones checked.
    fetcher = Fetcher(chosen[-1], progress=hub.progress_callback(progress), also=chosen[:-1])
    with fetcher.open_url(url, hash_prefix=hash_prefix) as opened, \
            Snapshot.of_fileobj(opened.file, url) as snap:
        _require_outer_pins(pins, snap.sha256, url, chosen)
        with snap.open() as reader:
            hub.write_atomically(reader, os.path.expanduser(dst))


def hub_load(original: Callable[..., Any], policies: Policies, repo_or_dir: str, model: str,
             *args: Any, source: str = "github", trust_repo: Any = None,
             force_reload: bool = False, verbose: bool = True, skip_validation: bool = False,
             **kwargs: Any) -> Any:
    del original
    from safehub._hub import api as hub

    chosen = distinct(policies)
    _outer_repo_checks(chosen, repo_or_dir, source, model, trust_repo)
    with also_policies(chosen[:-1]):
        return hub.load(repo_or_dir, model, *args, source=source, trust_repo=trust_repo,
                        force_reload=force_reload, verbose=verbose,
                        skip_validation=skip_validation, policy=_strictest_sandbox(chosen),
                        **kwargs)


def hub_load_local(original: Callable[..., Any], policies: Policies, hubconf_dir: str,
                   model: str, *args: Any, **kwargs: Any) -> Any:
    """``torch.hub._load_local``: what ``torch.hub.load(source="local")`` calls, reachable
    directly, so it is a local ``hub.load`` (the hubconf imported in the sandbox)."""
    return hub_load(original, policies, hubconf_dir, model, *args, source="local", **kwargs)


def hub_list(original: Callable[..., Any], policies: Policies, github: str,
             force_reload: bool = False, skip_validation: bool = False, trust_repo: Any = None,
             verbose: bool = True) -> list[str]:
    del original
    from safehub._hub import api as hub

    chosen = distinct(policies)
    _outer_repo_checks(chosen, github, "github", None, trust_repo)
    with also_policies(chosen[:-1]):
        return hub.list(github, force_reload, skip_validation, trust_repo, verbose,
                        policy=_strictest_sandbox(chosen))


def hub_help(original: Callable[..., Any], policies: Policies, github: str, model: str,
             force_reload: bool = False, skip_validation: bool = False,
             trust_repo: Any = None) -> str | None:
    del original
    from safehub._hub import api as hub

    chosen = distinct(policies)
    _outer_repo_checks(chosen, github, "github", model, trust_repo)
    with also_policies(chosen[:-1]):
        return hub.help(github, model, force_reload, skip_validation, trust_repo,
                        policy=_strictest_sandbox(chosen))
