"""The policy file schema (TOML, validated with pydantic; unknown keys are errors).

Every field says what it controls and which direction is stricter, because a policy
that ``extends`` another may only tighten it unless it names the keys it loosens.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

__all__ = [
    "LAYERS",
    "DownloadsSection",
    "PolicyModel",
    "RepoRule",
    "SandboxSection",
    "ScannerSection",
    "SignatureRule",
    "TrustSection",
]

SCHEMA_VERSION = 1

# Isolation layers a policy can require (see `safehub doctor`); the same names as
# safehub.sandbox.Layer, without importing the sandbox to validate a policy.
LAYERS = ("env", "fds", "pdeathsig", "uid", "mountns", "userns", "netns", "ipcns", "pidns",
          "caps", "rlimits", "nonewprivs", "landlock", "seccomp")

_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"
_REPO_NAME = r"[A-Za-z0-9._-]{1,100}"
REPO_RE = re.compile(rf"^{_OWNER}/{_REPO_NAME}$")
REPO_PATTERN_RE = re.compile(rf"^(?:{_OWNER}|\*)/(?:{_REPO_NAME}|\*)$")
OWNER_RE = re.compile(rf"^{_OWNER}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Which way each setting tightens, read by safehub._policy.tighten (one generic comparison of
# validated effective values). Every leaf field carries one; tests enforce it.
#   true / false : that boolean value is the stricter one
#   lower        : a smaller number is stricter
#   higher       : a larger number is stricter
#   order        : earlier values of the field's Literal are stricter
#   subset       : a list of things allowed (adding one loosens); None means "anything"
#   superset     : a list of things required or denied (removing one loosens)
#   fixed        : any change loosens (None = unset is the loosest)
#   pins         : name -> digest; dropping or changing a pin loosens, adding one tightens
#   rules        : a list of requirements; every parent rule must stay
#   repos        : repository rules, compared through the decision they produce
#   meta         : describes the file, not what is allowed
STRICTER = "x-stricter"


def _dir(direction: str) -> dict[str, JsonValue]:
    return {STRICTER: direction}


class _Section(BaseModel):
    # strict: a TOML string is never a bool or a number ("false" is not false).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TrustSection(_Section):
    """Who may supply code at all."""

    owners: list[str] = Field(default_factory=list, description=(
        "GitHub owners (organisations or users) whose repositories are trusted."),
                json_schema_extra=_dir("subset"))
    denied_owners: list[str] = Field(default_factory=list, description=(
        "Owners that are always denied, even if trusted elsewhere."),
                json_schema_extra=_dir("superset"))
    unknown_repos: Literal["deny", "sandbox"] = Field("deny", description=(
        "Repos neither trusted nor listed: 'deny', or 'sandbox' (allowed, sandboxed, with a "
        "warning). 'deny' is stricter."), json_schema_extra=_dir("order"))
    require_commit_pin: bool = Field(False, description=(
        "Every repo must be pinned to a full 40-hex commit in [repos]. true is stricter."),
                json_schema_extra=_dir("true"))
    honor_trust_repo: bool = Field(True, description=(
        "Whether hub.load(trust_repo=True) / --trust-repo may trust a repo for that call. "
        "false is stricter."), json_schema_extra=_dir("false"))
    read_torch_trusted_list: bool = Field(False, description=(
        "Also trust repos in torch.hub's trusted_list file. false is stricter."),
                json_schema_extra=_dir("false"))

    @field_validator("owners", "denied_owners")
    @classmethod
    def _owners(cls, values: list[str]) -> list[str]:
        for v in values:
            if not OWNER_RE.fullmatch(v):
                raise ValueError(f"{v!r} is not a GitHub owner name")
        return values


class RepoRule(_Section):
    """Rules for one repository, keyed ``"owner/name"`` (or ``"owner/*"``)."""

    allow: bool = Field(True, description="false denies the repo outright.",
            json_schema_extra=_dir("false"))
    commit: str | None = Field(None, description="Required full 40-hex commit SHA.",
            json_schema_extra=_dir("fixed"))
    entrypoints: list[str] | None = Field(None, description=(
        "Entrypoints that may be called; absent means any."), json_schema_extra=_dir("subset"))
    allowed_globals: list[str] = Field(default_factory=list, description=(
        "Extra pickle globals allowed in this repo's files."), json_schema_extra=_dir("subset"))
    allow_torchscript: bool = Field(False, description="Accept TorchScript from this repo.",
            json_schema_extra=_dir("false"))

    @field_validator("commit")
    @classmethod
    def _commit(cls, v: str | None) -> str | None:
        if v is not None and not SHA1_RE.fullmatch(v):
            raise ValueError("must be a full 40-hex commit SHA (lower case), not a branch or tag")
        return v

    @field_validator("allowed_globals")
    @classmethod
    def _globals(cls, values: list[str]) -> list[str]:
        return _check_globals(values)


class DownloadsSection(_Section):
    """What weights may be downloaded from where, and how they are pinned."""

    allowed_urls: list[str] = Field(default_factory=list, description=(
        "URL prefixes downloads may come from (https only, unless allow_http_loopback)."),
                json_schema_extra=_dir("subset"))
    allow_http_loopback: bool = Field(False, description=(
        "Allow plain http to 127.0.0.1, ::1 and localhost (tests, local mirrors). "
        "false is stricter."), json_schema_extra=_dir("false"))
    require_digests: bool = Field(False, description=(
        "Every downloaded file needs a full SHA-256 pin (here, in the lockfile) or a "
        "signature. true is stricter."), json_schema_extra=_dir("true"))
    offline: bool = Field(False, description="Never use the network. true is stricter.",
            json_schema_extra=_dir("true"))
    max_size_mb: int = Field(20480, gt=0, description="Largest download. Lower is stricter.",
            json_schema_extra=_dir("lower"))
    deadline_s: float = Field(300, gt=0, allow_inf_nan=False, description=(
        "Overall time limit of one download or API call (redirects and retries included), "
        "in seconds, on top of the time its received bytes take at min_rate_kb_s: a server "
        "that trickles bytes cannot hold a request open. Lower is stricter."),
        json_schema_extra=_dir("lower"))
    min_rate_kb_s: int = Field(64, gt=0, description=(
        "Each KiB received earns 1/min_rate_kb_s s on top of deadline_s (a slow but steady "
        "transfer of a big file finishes). Higher is stricter."),
        json_schema_extra=_dir("higher"))
    pins: dict[str, str] = Field(default_factory=dict, description=(
        "URL or file name -> SHA-256 of the file (64 hex)."), json_schema_extra=_dir("pins"))
    github_api: str = Field("https://api.github.com", description=(
        "Base URL of the GitHub-compatible REST API (GitHub Enterprise, mirrors)."),
                json_schema_extra=_dir("fixed"))

    @field_validator("pins")
    @classmethod
    def _pins(cls, pins: dict[str, str]) -> dict[str, str]:
        for key, digest in pins.items():
            _pin_key(key)
            value = digest.removeprefix("sha256:")
            if not SHA256_RE.fullmatch(value):
                raise ValueError(f"pin for {key!r} must be a 64-hex SHA-256")
        return {k: v.removeprefix("sha256:") for k, v in pins.items()}


# A file-name pin key that starts like a URL ("https:/x", "https//x"): a mistyped URL.
_URLISH_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/|https?//", re.IGNORECASE)


def _pin_key(key: str) -> None:
    """A pin key names a download the decision can match, or the policy is invalid: a pin
    that matches nothing (a URL the canonical form refuses, a copied trailing space) would
    leave the file it was meant for unpinned, silently."""
    from safehub._policy.urls import parse_url
    from safehub.errors import InvalidIdentifier

    if "://" in key:
        try:
            parse_url(key)
        except InvalidIdentifier as exc:
            raise ValueError(f"pin key {key!a} is not a usable URL ({exc.message}): "
                             "it would pin nothing") from None
        return
    if (not key or key in (".", "..") or key != key.strip() or "\\" in key
            or not key.isprintable() or _URLISH_RE.match(key)):
        raise ValueError(f"pin key {key!a} is neither an http(s) URL nor a file name: "
                         "it would pin nothing")


class SignatureRule(_Section):
    """A signature requirement for repos (``owner/name`` patterns) or local paths."""

    scope: str = Field(description=(
        "'owner/repo', 'owner/*', or 'path:GLOB' for local folders and files."),
                json_schema_extra=_dir("fixed"))
    public_keys: list[str] = Field(default_factory=list, description=(
        "PEM public keys (paths relative to this policy file)."), json_schema_extra=_dir("fixed"))
    certificate_chains: list[str] = Field(default_factory=list, description=(
        "PEM certificate chains / CA bundles (paths relative to this policy file)."),
                json_schema_extra=_dir("fixed"))
    ignore_unsigned_files: bool = Field(False, description=(
        "Tolerate unsigned extra non-code files. false is stricter."),
                json_schema_extra=_dir("false"))

    @model_validator(mode="after")
    def _anchors(self) -> SignatureRule:
        if not self.public_keys and not self.certificate_chains:
            raise ValueError("a signature rule needs public_keys or certificate_chains")
        if not (self.scope.startswith("path:") or REPO_PATTERN_RE.fullmatch(self.scope)):
            raise ValueError(f"scope {self.scope!r} is neither owner/repo, owner/* nor path:GLOB")
        return self


class ScannerSection(_Section):
    """How scan findings are treated."""

    allowed_globals: list[str] = Field(default_factory=list, description=(
        "Extra pickle globals allowed everywhere (exact names or module.*)."),
                json_schema_extra=_dir("subset"))
    allow_torchscript: bool = Field(False, description=(
        "Accept TorchScript archives (code then runs only in the sandbox)."),
                json_schema_extra=_dir("false"))
    block_severity: Literal["info", "low", "medium", "high", "critical"] = Field(
        "low", description=("Findings at or above this severity block; lower ones warn. "
                            "Lower is stricter."), json_schema_extra=_dir("order"))
    max_file_size_mb: int = Field(65536, gt=0, description="Largest file scanned. Lower is "
                                  "stricter.", json_schema_extra=_dir("lower"))

    @field_validator("allowed_globals")
    @classmethod
    def _globals(cls, values: list[str]) -> list[str]:
        return _check_globals(values)


class SandboxSection(_Section):
    """Limits for repo code, and which isolation layers must be present."""

    timeout_s: float = Field(300, gt=0, description="Wall-clock limit per call.",
            json_schema_extra=_dir("lower"))
    memory_mb: int = Field(16384, gt=0, description="Address-space limit.",
            json_schema_extra=_dir("lower"))
    cpu_s: int = Field(600, gt=0, description="CPU-time limit.", json_schema_extra=_dir("lower"))
    max_processes: int = Field(64, gt=0, description="Process/thread limit.",
            json_schema_extra=_dir("lower"))
    max_file_mb: int = Field(4096, gt=0, description="Largest file the code may write.",
            json_schema_extra=_dir("lower"))
    max_open_files: int = Field(256, gt=0, description="Open file descriptors.",
            json_schema_extra=_dir("lower"))
    required_layers: list[str] = Field(default_factory=list, description=(
        f"Layers that must be available or the call refuses to run: any of {', '.join(LAYERS)}"
        ", or 'all'. More is stricter."), json_schema_extra=_dir("superset"))
    reuse: Literal["per-call", "per-repo"] = Field("per-repo", description=(
        "'per-repo': calls of one repository (same commit or tree, policy and limits) share "
        "a warm sandboxed child that imports hubconf.py once and forks one process per "
        "call, so the repository's modules stay imported between its calls as under "
        "torch.hub; 'per-call': a fresh sandboxed child for every call, sharing nothing. "
        "'per-call' is stricter."), json_schema_extra=_dir("order"))

    @field_validator("required_layers")
    @classmethod
    def _layers(cls, values: list[str]) -> list[str]:
        if "all" in values:
            return list(LAYERS)
        unknown = [v for v in values if v not in LAYERS]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; choose from {', '.join(LAYERS)}")
        return values


class PolicyModel(_Section):
    """A whole policy file."""

    schema_: int = Field(alias="schema", description="Policy schema version (1).",
                         json_schema_extra=_dir("meta"))
    name: str = Field("", description="A short name shown in decisions.",
                      json_schema_extra=_dir("meta"))
    description: str = Field("", json_schema_extra=_dir("meta"))
    extends: str | None = Field(None, description=(
        "A preset name (strict, default, permissive) or a path relative to this file."),
        json_schema_extra=_dir("meta"))
    loosen: list[str] = Field(default_factory=list, description=(
        "Keys this file may set looser than the policy it extends, e.g. 'sandbox.timeout_s', "
        "'downloads.allowed_urls' or 'repos.\"acme/model\"' (a key also covers what is "
        "below it)."), json_schema_extra=_dir("meta"))
    trust: TrustSection = Field(default_factory=TrustSection, json_schema_extra=_dir("section"))
    repos: dict[str, RepoRule] = Field(default_factory=dict, json_schema_extra=_dir("repos"))
    downloads: DownloadsSection = Field(default_factory=DownloadsSection,
                                        json_schema_extra=_dir("section"))
    signatures: list[SignatureRule] = Field(default_factory=list,
                                            json_schema_extra=_dir("rules"))
    scanner: ScannerSection = Field(default_factory=ScannerSection,
                                    json_schema_extra=_dir("section"))
    sandbox: SandboxSection = Field(default_factory=SandboxSection,
                                    json_schema_extra=_dir("section"))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema version {v}; this safehub reads {SCHEMA_VERSION}")
        return v

    @field_validator("repos")
    @classmethod
    def _repo_keys(cls, repos: dict[str, RepoRule]) -> dict[str, RepoRule]:
        for key in repos:
            if not REPO_PATTERN_RE.fullmatch(key):
                raise ValueError(f"repo key {key!r} is not 'owner/name', 'owner/*', '*/name' "
                                 "or '*/*'")
        return repos

    @model_validator(mode="after")
    def _contradictions(self) -> PolicyModel:
        both = sorted(set(self.trust.owners) & set(self.trust.denied_owners))
        if both:
            raise ValueError(f"owners both trusted and denied: {', '.join(both)}")
        for key, rule in self.repos.items():
            if not rule.allow and (rule.commit or rule.entrypoints or rule.allowed_globals):
                raise ValueError(f"repo {key!r} is denied (allow = false) but also configured")
        for url in self.downloads.allowed_urls:
            if not _url_ok(url, self.downloads.allow_http_loopback):
                raise ValueError(
                    f"allowed_urls entry {url!r} must be https:// (plain http only for "
                    "loopback with allow_http_loopback = true)")
        return self


def _check_globals(values: list[str]) -> list[str]:
    from safehub._scanner.entry import check_allowable
    from safehub.errors import PolicyError

    try:
        check_allowable(values)
    except PolicyError as exc:
        # A ValueError keeps pydantic collecting the file's other problems.
        raise ValueError("; ".join(f"{i.key} {i.message}" for i in exc.issues)
                         or exc.message) from None
    return values


def _url_ok(url: str, allow_http_loopback: bool) -> bool:
    from safehub._policy.urls import is_loopback_http

    if url.startswith("https://"):
        return True
    return allow_http_loopback and is_loopback_http(url)
