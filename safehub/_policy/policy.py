"""An effective policy (after ``extends``) and how one is selected and loaded.

The public face is :mod:`safehub.policy` (which documents the selection rules); this
module holds the implementation so that the private packages depend on it, not on
the facade.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safehub._policy.decide import (
    Decision,
    DownloadRequest,
    FileRequest,
    IsolationRequest,
    RepoRequest,
    Requirement,
    decide,
    repo_rule,
    signature_requirements,
)
from safehub._policy.loader import LoadedPolicy, load_chain
from safehub._policy.schema import PolicyModel
from safehub._policy.select import BUILT_IN_DEFAULT, EXPLICIT, resolve_spec
from safehub._policy.tighten import Loosening, loosenings
from safehub._scanner.context import ScanOptions
from safehub.errors import PolicyError, PolicyIssue
from safehub.findings import PolicySource
from safehub.rules import Severity

__all__ = ["Policy", "load_policy"]


class Policy:
    """An effective policy (after ``extends``) that answers requests with Decisions."""

    def __init__(self, loaded: LoadedPolicy, selected_by: str = EXPLICIT):
        self._loaded = loaded
        self.selected_by = selected_by

    @property
    def model(self) -> PolicyModel:
        """The validated effective settings."""
        return self._loaded.model

    @property
    def name(self) -> str:
        return self.model.name or self._loaded.chain[-1]

    @property
    def chain(self) -> list[str]:
        """The files (or ``preset:NAME``) this policy is made of, root first."""
        return list(self._loaded.chain)

    @property
    def source(self) -> PolicySource:
        """The policy's name, files and how it was selected, for reports."""
        return PolicySource(self.name, tuple(self._loaded.chain), self.selected_by)

    def describe(self) -> str:
        """``NAME (FILES; how it was selected)``, as every report names the policy."""
        return self.source.describe()

    def anchors(self) -> list[tuple[PolicyIssue, str, str]]:
        """The key and certificate files the signature rules name (for ``policy check``)."""
        return self._loaded.anchors()

    def where(self, *key: str) -> str:
        """The ``file:line`` that set a key (e.g. ``policy.where('trust', 'owners')``)."""
        return self._loaded.where(*key)

    def decide(
        self, request: RepoRequest | DownloadRequest | FileRequest | IsolationRequest
    ) -> Decision:
        """Decide a request; never raises for a denial (see :meth:`check`)."""
        return decide(self._loaded, request)

    def check(
        self, request: RepoRequest | DownloadRequest | FileRequest | IsolationRequest
    ) -> Decision:
        """Decide a request and raise :class:`~safehub.errors.PolicyViolation` if denied."""
        return self.decide(request).raise_if_denied()

    def signature_requirements(self, repo: str) -> list[Requirement]:
        """The signature rules covering ``owner/name``, whether or not the repo is trusted
        (the audit applies them to models already in a cache)."""
        return signature_requirements(self._loaded, repo)

    def scan_options(self, repo: str | None = None) -> ScanOptions:
        """Scanner settings for files in general, or for one repo's files."""
        scanner = self.model.scanner
        allowed = list(scanner.allowed_globals)
        torchscript = scanner.allow_torchscript
        found = repo_rule(self._loaded, repo) if repo else None
        if found is not None:
            allowed += found[1].allowed_globals
            torchscript = torchscript or found[1].allow_torchscript
        return ScanOptions(
            allowed_globals=tuple(dict.fromkeys(allowed)),
            allow_torchscript=torchscript,
            max_file_size=scanner.max_file_size_mb << 20,
            allowed_by=f"policy {self.name}",
            block_severity=Severity(scanner.block_severity),
        )

    def with_download_prefixes(self, prefixes: list[str] | tuple[str, ...]) -> Policy:
        """This policy with more download URL prefixes, for one run (``--allow-url``).

        Only https prefixes, or plain http to a loopback address, are accepted; the
        latter turns on ``allow_http_loopback`` for this derived policy only.
        """
        if not prefixes:
            return self
        from safehub._policy.schema import DownloadsSection
        from safehub._policy.urls import is_loopback_http

        bad = [p for p in prefixes if not (p.startswith("https://") or is_loopback_http(p))]
        if bad:
            raise PolicyError(f"cannot allow downloads from {bad[0]!r}: only https:// prefixes, "
                              "or plain http to a loopback address", subject=bad[0],
                              fix="use an https:// URL prefix")
        downloads = self.model.downloads
        loopback = downloads.allow_http_loopback or any(p.startswith("http://") for p in prefixes)
        new = DownloadsSection.model_validate({
            **downloads.model_dump(), "allowed_urls": [*downloads.allowed_urls, *prefixes],
            "allow_http_loopback": loopback})
        loaded = self._loaded
        provenance = dict(loaded.provenance)
        for prefix in prefixes:
            provenance[("downloads", "allowed_urls", prefix)] = "--allow-url"
        derived = LoadedPolicy(model=self.model.model_copy(update={"downloads": new}),
                               chain=[*loaded.chain, "--allow-url"], provenance=provenance,
                               sources=loaded.sources)
        return Policy(derived, self.selected_by)

    def to_toml(self) -> str:
        """The effective policy as TOML (what ``safehub policy show`` prints)."""
        import tomli_w

        from safehub._format.escape import escape_line, inert_toml

        data: dict[str, Any] = self.model.model_dump(by_alias=True, exclude_none=True)
        data.pop("extends", None)
        data.pop("loosen", None)
        # The chain's paths and the name come from files: escaped, so a newline in either
        # cannot end the comment and add TOML of its own; string values as TOML escapes.
        chain = escape_line(" <- ".join(reversed(self.chain)))
        header = f"# effective policy {escape_line(repr(self.name))} from: {chain}\n"
        return header + inert_toml(tomli_w.dumps(data))

    @staticmethod
    def json_schema() -> dict[str, Any]:
        """JSON Schema of policy files, for editors."""
        schema = PolicyModel.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "safehub policy"
        return schema

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, chain={self.chain!r})"


def load_policy(spec: str | os.PathLike[str] | Policy | None = None, *,
                cwd: str | os.PathLike[str] | None = None) -> Policy:
    """The policy named by ``spec`` (preset name or path), or the one selected by default.

    Raises :class:`~safehub.errors.PolicyError` for a missing or invalid policy.
    """
    if isinstance(spec, Policy):
        return spec
    chosen, why = resolve_spec(spec, cwd=Path(cwd) if cwd else None)
    try:
        loaded = load_chain(chosen)
    except PolicyError as exc:
        if why != EXPLICIT and exc.message:
            exc.message = f"{exc.message} ({why})"
        raise
    if why not in (EXPLICIT, BUILT_IN_DEFAULT):
        _refuse_looser_than_default(loaded, chosen, why)
    return Policy(loaded, why)


def _selecting_pins(default: PolicyModel, loaded: LoadedPolicy) -> list[Loosening]:
    """Commit pins an implicit policy introduces or changes. A pin reads as tightening, but
    it also *selects* what a ref-less load fetches, and on GitHub a commit pushed to a fork
    is served through the parent's URLs: a cloned project's pyproject.toml could swap a
    trusted repo's code for a commit of its choosing. So, for implicit sources, it loosens."""
    out = []
    for key, rule in loaded.model.repos.items():
        before = default.repos.get(key)
        if rule.commit is not None and (before is None or before.commit != rule.commit):
            out.append(Loosening(
                ("repos", key, "commit"),
                f"pins {key!r} to commit {rule.commit} ({loaded.where('repos', key, 'commit')}),"
                " which selects the code a ref-less load fetches"))
    return out


def _refuse_looser_than_default(loaded: LoadedPolicy, chosen: str, why: str) -> None:
    """An implicitly found policy may only tighten the built-in default (its own
    ``loosen`` list does not count: whoever wrote the file is not the one running)."""
    default = load_chain("default").model
    found = loosenings(default, loaded.model) + _selecting_pins(default, loaded)
    if not found:
        return
    keys = ", ".join(item.dotted for item in found[:5]) + (", ..." if len(found) > 5 else "")
    raise PolicyError(
        f"policy {chosen!r} ({why}) is looser than the built-in default ({keys}); a policy "
        "found implicitly may only tighten it", subject=chosen,
        fix="if you trust that policy, pass it explicitly with --policy (policy= in Python); "
            "otherwise remove the setting that selects it",
        issues=[PolicyIssue(why.removeprefix("selected by "), item.dotted, item.message)
                for item in found])


# Public as safehub.policy.Policy: pickles and help() name the public path.
Policy.__module__ = "safehub.policy"
