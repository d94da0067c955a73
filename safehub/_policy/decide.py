"""Turning a request into a Decision, with the trail of rules that produced it.

Each kind of request has one function here. They only read the effective policy
(and, for torch's trusted_list, one small file when the policy says so): no
network, no scanning. A Decision says allowed or not, which rules matched (file
and key of each), what is still required (a pin, a signature), and for a denial
the narrowest change that would allow it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from safehub._policy.loader import LoadedPolicy
from safehub._policy.paths import path_scope_matches
from safehub._policy.repo_id import RepoId, looks_like_sha, normalize_ref
from safehub._policy.schema import SHA1_RE, RepoRule, SignatureRule
from safehub._policy.urls import CanonicalURL, is_loopback_http, parse_url, url_matches_prefix
from safehub.errors import InvalidIdentifier, PolicyError, PolicyViolation
from safehub.findings import FileReport, Verdict
from safehub.rules import Severity

__all__ = [
    "Decision",
    "DownloadRequest",
    "FileRequest",
    "IsolationRequest",
    "RepoRequest",
    "Requirement",
    "Step",
    "TrustRepo",
    "decide",
    "signature_requirements",
]

TrustRepo = bool | Literal["check"] | None
TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RepoRequest:
    """Use code from a repository: ``owner/name[:ref]``, optionally one entrypoint."""

    repo: str
    ref: str | None = None
    entrypoint: str | None = None
    trust_repo: TrustRepo = None
    source: Literal["github", "local"] = "github"
    hub_dir: str | None = None  # torch.hub's directory, for its trusted_list


@dataclass(frozen=True)
class DownloadRequest:
    """Download a URL (weights), on behalf of a repo or the caller."""

    url: str
    file_name: str | None = None
    repo: str | None = None
    known_digest: str | None = None  # a digest from the lockfile or a signature
    from_cache: bool = False  # served from the cache: no network, but every URL rule applies


@dataclass(frozen=True)
class FileRequest:
    """Load a file that was scanned (the report holds the findings)."""

    report: FileReport
    repo: str | None = None


@dataclass(frozen=True)
class IsolationRequest:
    """Run code in the sandbox given which isolation layers this machine has.

    ``available`` maps layer name -> None when available, or the reason it is not.
    """

    available: Mapping[str, str | None]


Request = RepoRequest | DownloadRequest | FileRequest | IsolationRequest


@dataclass(frozen=True)
class Step:
    """One rule that took part in a decision."""

    rule: str  # dotted key, e.g. "trust.owners"
    source: str  # file:line that holds it, or "built-in default"
    outcome: Literal["allow", "deny", "require", "warn", "note"]
    message: str

    def __str__(self) -> str:
        return f"{self.outcome:7} {self.rule} ({self.source}): {self.message}"


@dataclass(frozen=True)
class Requirement:
    """Something that must still hold for the request to go ahead."""

    kind: Literal["commit", "sha256", "signature", "sandbox"]
    value: str
    rule: str
    # For signatures: PEM public keys and certificate chains (paths resolved against the
    # policy file that names them).
    public_keys: tuple[str, ...] = ()
    certificate_chains: tuple[str, ...] = ()
    ignore_unsigned_files: bool = False
    # For sha256: matched only through the caller's ``file_name`` (not the URL or its own
    # file name), so it binds the bytes without tying them to the URL.
    by_file_name: bool = False

    @property
    def anchors(self) -> tuple[str, ...]:
        """Every key and certificate file the requirement trusts."""
        return (*self.public_keys, *self.certificate_chains)


@dataclass(frozen=True)
class Decision:
    """The answer to a request, and why."""

    allowed: bool
    subject: str
    trail: tuple[Step, ...]
    requirements: tuple[Requirement, ...] = ()
    fix: str = ""
    policy: str = ""
    # The canonical identity decided on: the casefolded ``owner/name`` of a repo, the
    # canonical URL of a download ("" when the request named nothing valid).
    identity: str = ""

    @property
    def warnings(self) -> list[Step]:
        return [s for s in self.trail if s.outcome == "warn"]

    def requirement(self, kind: str) -> Requirement | None:
        return next((r for r in self.requirements if r.kind == kind), None)

    def raise_if_denied(self) -> Decision:
        """Raise :class:`PolicyViolation` (with the trail and the fix) when denied."""
        if not self.allowed:
            denial = next((s for s in self.trail if s.outcome == "deny"), None)
            message = denial.message if denial else "denied by policy"
            raise PolicyViolation(f"policy {self.policy!r} denies {self.subject}: {message}",
                                  subject=self.subject, fix=self.fix,
                                  trail=[str(s) for s in self.trail])
        return self


@dataclass
class _Trail:
    policy: LoadedPolicy
    steps: list[Step] = field(default_factory=list)
    requirements: list[Requirement] = field(default_factory=list)
    denied: bool = False
    fix: str = ""

    def add(self, outcome: Literal["allow", "deny", "require", "warn", "note"], message: str,
            *key: str) -> None:
        self.steps.append(Step(".".join(key), self.policy.where(*key), outcome, message))
        if outcome == "deny":
            self.denied = True

    def deny(self, message: str, fix: str, *key: str) -> None:
        self.add("deny", message, *key)
        if not self.fix:
            self.fix = fix

    def decision(self, subject: str, identity: str = "") -> Decision:
        return Decision(allowed=not self.denied, subject=subject, trail=tuple(self.steps),
                        requirements=tuple(self.requirements), fix=self.fix,
                        policy=self.policy.model.name or self.policy.chain[-1],
                        identity=identity)


def decide(policy: LoadedPolicy, request: Request) -> Decision:
    if isinstance(request, RepoRequest):
        return _decide_repo(policy, request)
    if isinstance(request, DownloadRequest):
        return _decide_download(policy, request)
    if isinstance(request, FileRequest):
        return _decide_file(policy, request)
    return _decide_sandbox(policy, request)


# --- repositories ----------------------------------------------------------------------------


def repo_rule(policy: LoadedPolicy, repo: str | RepoId) -> tuple[str, RepoRule] | None:
    """The rule for ``owner/name``, the most specific key first: exact, then ``owner/*``,
    then ``*/name``, then ``*/*``, all compared casefolded (GitHub names are
    case-insensitive). Two keys of one rank naming the same repo (or owner) in different
    cases make the policy ambiguous: :class:`PolicyError`.

    Across an ``extends`` chain a denial tightens: a matching ``allow = false`` rule set
    by a file that extends the one that set the most specific rule wins over it (a
    child's ``[repos."acme/*"] allow = false`` denies the ``acme/det`` its parent lists).
    Within one file the most specific rule decides (``acme/*`` denied, ``acme/det``
    allowed as the exception)."""
    rid = repo if isinstance(repo, RepoId) else RepoId.parse(repo)
    ranks: tuple[list[tuple[str, RepoRule]], ...] = ([], [], [], [])
    for key, rule in policy.model.repos.items():
        if not rid.matches(key):
            continue
        owner, _, name = key.partition("/")
        ranks[(owner == "*") * 2 + (name == "*")].append((key, rule))
    for found in ranks:
        if len(found) > 1:
            keys = ", ".join(repr(k) for k, _ in found)
            raise PolicyError(f"[repos] keys {keys} all name {rid} (names are compared "
                              "case-insensitively)", subject=policy.chain[-1],
                              fix="keep one [repos] entry per repository")
        if found:
            key, rule = found[0]
            if rule.allow:
                level = _rule_level(policy, key)
                later = [(k, r) for rank in ranks for k, r in rank
                         if not r.allow and _rule_level(policy, k) > level]
                if later:
                    return later[0]
            return key, rule
    return None


def _rule_level(policy: LoadedPolicy, key: str) -> int:
    """How deep in the ``extends`` chain the last file setting ``[repos.<key>]`` is
    (-1 when unknown)."""
    index = {label: i for i, label in enumerate(policy.chain)}
    return max((index.get(label, -1) for path, label in policy.provenance.items()
                if path[:2] == ("repos", key)), default=-1)


def _policy_file(policy: LoadedPolicy) -> str:
    """Where a fix should go: the leaf file, or a new file extending the preset in use."""
    leaf = policy.chain[-1]
    if leaf.startswith("preset:"):
        return f"a policy file with `extends = \"{leaf[len('preset:'):]}\"`"
    return leaf


def _decide_repo(policy: LoadedPolicy, req: RepoRequest) -> Decision:
    t = _Trail(policy)
    m = policy.model
    ref = normalize_ref(req.ref) if req.ref else None
    subject = req.repo + (f":{ref}" if ref else "")
    if req.entrypoint:
        subject += f" entrypoint {req.entrypoint!r}"
    pfile = _policy_file(policy)
    if req.source == "local":
        t.add("allow", "local folder: its code runs only in the sandbox", "source")
        _signature_requirements(t, policy, f"path:{req.repo}", local_path=req.repo)
        _reuse_note(t, policy)
        t.requirements.append(Requirement("sandbox", "required", "sandbox"))
        return t.decision(subject)
    try:
        rid = RepoId.parse(req.repo)
    except InvalidIdentifier as exc:
        t.deny(f"{req.repo!a} is not a valid 'owner/name': {exc.message}",
               exc.fix or "name the repository as owner/name", "repos")
        return t.decision(ascii(subject)[1:-1] if not subject.isprintable() else subject)
    req = replace(req, ref=ref)
    owner = rid.owner
    if rid.owned_by(m.trust.denied_owners):
        t.deny(f"owner {owner!r} is denied", f"remove {owner!r} from trust.denied_owners in "
               f"{policy.where('trust', 'denied_owners').split(':')[0]}", "trust",
               "denied_owners")
        return t.decision(subject, rid.key)
    found = repo_rule(policy, rid)
    rule = found[1] if found else None
    key = found[0] if found else ""
    if rule is not None and not rule.allow:
        t.deny(f"repo rule {key!r} denies it", f"set allow = true for {key!r} in [repos]",
               "repos", key, "allow")
        return t.decision(subject, rid.key)
    _trust(t, policy, req, rid, rule, key, pfile)
    if t.denied:
        return t.decision(subject, rid.key)
    _commit(t, policy, req, rule, key, pfile)
    if req.entrypoint and rule is not None and rule.entrypoints is not None:
        if req.entrypoint in rule.entrypoints:
            t.add("allow", f"entrypoint {req.entrypoint!r} is listed", "repos", key,
                  "entrypoints")
        else:
            t.deny(f"entrypoint {req.entrypoint!r} is not in {rule.entrypoints}",
                   f"add {req.entrypoint!r} to repos.{key!r}.entrypoints in {pfile}",
                   "repos", key, "entrypoints")
    _signature_requirements(t, policy, rid.key)
    _reuse_note(t, policy)
    t.requirements.append(Requirement("sandbox", "required", "sandbox"))
    return t.decision(subject, rid.key)


def _reuse_note(t: _Trail, policy: LoadedPolicy) -> None:
    if policy.model.sandbox.reuse == "per-repo":
        t.add("note", "its calls share one warm sandboxed child (modules imported once, as "
              "in torch.hub; each call in a process of its own)", "sandbox", "reuse")
    else:
        t.add("note", "each call runs in a fresh sandboxed child", "sandbox", "reuse")


def _trust(t: _Trail, policy: LoadedPolicy, req: RepoRequest, rid: RepoId,
           rule: RepoRule | None, key: str, pfile: str) -> None:
    m = policy.model
    owner = rid.owner
    trusted = next((o for o in m.trust.owners if o.casefold() == rid.owner_key), None)
    if trusted is not None:
        t.add("allow", f"owner {trusted!r} is trusted", "trust", "owners", trusted)
        return
    if rule is not None:
        t.add("allow", f"repo is listed as {key!r}", "repos", key)
        return
    if req.trust_repo is True:
        if m.trust.honor_trust_repo:
            t.add("allow", "trusted by the caller for this call (trust_repo=True)", "trust",
                  "honor_trust_repo")
            return
        t.add("note", "trust_repo=True is ignored by this policy", "trust", "honor_trust_repo")
    if (m.trust.read_torch_trusted_list and req.hub_dir
            and _in_torch_trusted_list(req.hub_dir, rid)):
        t.add("allow", "listed in torch.hub's trusted_list", "trust", "read_torch_trusted_list")
        return
    if m.trust.unknown_repos == "sandbox":
        t.add("warn", f"{req.repo} is not trusted; allowed to run sandboxed only", "trust",
              "unknown_repos")
        return
    hint = " or pass trust_repo=True / --trust-repo" if m.trust.honor_trust_repo else ""
    t.deny(f"{req.repo} is not trusted (owner {owner!r} is not in trust.owners)",
           f"add [repos.\"{req.repo}\"] to {pfile}{hint}", "trust", "unknown_repos")


def _commit(t: _Trail, policy: LoadedPolicy, req: RepoRequest, rule: RepoRule | None, key: str,
            pfile: str) -> None:
    pinned = rule.commit if rule is not None else None
    if pinned:
        # A full SHA must be the pin; a SHA-looking ref must be a prefix of it (a branch or
        # tag named like one would resolve elsewhere, and is then refused by the fetch).
        differs = (SHA1_RE.fullmatch(req.ref) is not None and req.ref != pinned) or (
            looks_like_sha(req.ref) and not pinned.startswith(req.ref.lower())) \
            if req.ref else False
        if differs:
            t.deny(f"ref {req.ref} differs from the pinned commit {pinned}",
                   f"use {req.repo}:{pinned}, or change repos.{key!r}.commit in {pfile}",
                   "repos", key, "commit")
            return
        t.requirements.append(Requirement("commit", pinned, f"repos.{key}.commit"))
        t.add("require", f"the ref must resolve to commit {pinned}", "repos", key, "commit")
    elif policy.model.trust.require_commit_pin:
        t.deny(f"{req.repo} is not pinned to a commit",
               f"set commit = \"<40-hex sha>\" under [repos.\"{req.repo}\"] in {pfile}",
               "trust", "require_commit_pin")


def _in_torch_trusted_list(hub_dir: str, rid: RepoId) -> bool:
    # torch.hub stores "owner_name" per line in <hub_dir>/trusted_list, as the caller spelled
    # it; an owner never holds '_', so the line names one repository.
    path = Path(hub_dir) / "trusted_list"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return f"{rid.owner}_{rid.name}".casefold() in {line.strip().casefold() for line in lines}


def signature_requirements(policy: LoadedPolicy, scope: str,
                           local_path: str | None = None) -> list[Requirement]:
    """The signature rules covering a repo id (``owner/name``) or a local path."""
    found = []
    for index, rule in enumerate(policy.model.signatures):
        if _signature_applies(policy, index, rule, scope, local_path):
            found.append(Requirement(
                "signature", rule.scope, f"signatures[{index}]",
                public_keys=tuple(_anchor_path(policy, index, p) for p in rule.public_keys),
                certificate_chains=tuple(_anchor_path(policy, index, p)
                                         for p in rule.certificate_chains),
                ignore_unsigned_files=rule.ignore_unsigned_files))
    return found


def _signature_requirements(t: _Trail, policy: LoadedPolicy, scope: str,
                            local_path: str | None = None) -> None:
    for req in signature_requirements(policy, scope, local_path):
        t.requirements.append(req)
        t.add("require", f"must be signed by one of {len(req.anchors)} trusted keys or chains",
              "signatures", req.rule[len("signatures["):-1])


def _signature_applies(policy: LoadedPolicy, index: int, rule: SignatureRule, scope: str,
                       local_path: str | None) -> bool:
    if rule.scope.startswith("path:"):
        if local_path is None:
            return False
        # A relative scope is relative to the policy file that names it (as its keys are),
        # never to the process's working folder. Spelling or real path: either matches.
        pattern = _anchor_path(policy, index, rule.scope[len("path:"):])
        return path_scope_matches(pattern, local_path)
    # owner/name, owner/*, */name or */*: a '*' stands for a whole part, never for a '/'.
    # Compared casefolded; a scope that is no valid repo gets every repo rule (fail closed).
    if local_path is not None:
        return False
    try:
        return RepoId.parse(scope).matches(rule.scope)
    except InvalidIdentifier:
        return True


def _anchor_path(policy: LoadedPolicy, index: int, path: str) -> str:
    """Key and certificate paths are relative to the policy file that names them."""
    source = policy.provenance.get(("signatures", str(index)), "")
    if os.path.isabs(path) or not source or source.startswith("preset:"):
        return path
    return str(Path(source).parent / path)


# --- downloads --------------------------------------------------------------------------------


def _decide_download(policy: LoadedPolicy, req: DownloadRequest) -> Decision:
    t = _Trail(policy)
    d = policy.model.downloads
    pfile = _policy_file(policy)
    # Everything below is decided on the canonical URL, which is also the one requested.
    try:
        parsed = parse_url(req.url)
    except InvalidIdentifier as exc:
        t.deny(exc.message, exc.fix or "use an https:// URL", "downloads", "allowed_urls")
        return t.decision(exc.subject or "")
    url = str(parsed)
    if req.from_cache:
        t.add("note", "served from the cache (no network)", "downloads", "offline")
    elif d.offline or os.environ.get("SAFEHUB_OFFLINE", "").strip().lower() in TRUE_WORDS:
        t.deny("offline mode: no downloads", "run online, or put the file in the cache first",
               "downloads", "offline")
        return t.decision(req.url, url)
    if parsed.scheme != "https":
        if is_loopback_http(url) and d.allow_http_loopback:
            t.add("allow", "plain http to a loopback address", "downloads",
                  "allow_http_loopback")
        else:
            reason = ("plain http (only loopback with downloads.allow_http_loopback)"
                      if parsed.scheme == "http" else f"the {parsed.scheme} scheme")
            fix = "use an https:// URL"
            if parsed.scheme == "http" and is_loopback_http(url):
                # A local server is a legitimate source: name both ways to allow it.
                loopback = _prefix_for(parsed)
                fix = (f"set downloads.allow_http_loopback = true and add {loopback!r} to "
                       f"downloads.allowed_urls in {pfile}, or pass --allow-url {loopback} "
                       "for one run")
            t.deny(f"{reason} is not allowed", fix, "downloads", "allowed_urls")
            return t.decision(req.url, url)
    prefix = next((p for p in d.allowed_urls if url_matches_prefix(url, p)), None)
    if prefix is None:
        suggestion = _prefix_for(parsed)
        t.deny("the URL is outside downloads.allowed_urls",
               f"add {suggestion!r} to downloads.allowed_urls in {pfile}", "downloads",
               "allowed_urls")
        return t.decision(req.url, url)
    t.add("allow", f"matches allowed prefix {prefix!r}", "downloads", "allowed_urls", prefix)
    t.add("note", f"must finish within {d.deadline_s:g} s plus 1 s per {d.min_rate_kb_s} KiB "
          "received", "downloads", "deadline_s")
    # Every pin that names this download applies, and all must agree: pins keyed by the URL,
    # by the URL's own file name (torch.hub's default name), and by the caller's
    # ``file_name`` (torch.hub's cache name, which the caller, or a sandboxed hubconf,
    # chooses freely: a pin on it binds the bytes, but says nothing about which URL they
    # belong to, so it does not make torch.hub's copy stand in for this URL).
    pins = [(k, False) for k in _pin_keys(d.pins, url)]
    pins += [(k, False) for k in _name_keys(d.pins, url_file_names(parsed))]
    if req.file_name and req.file_name in d.pins and "://" not in req.file_name and \
            all(k != req.file_name for k, _ in pins):
        pins.append((req.file_name, True))
    if len({d.pins[k] for k, _ in pins}) > 1:
        t.deny(f"downloads.pins {', '.join(repr(k) for k, _ in pins)} all name {url}"
               f"{f' (file_name {req.file_name!r})' if req.file_name else ''} with different "
               "digests", f"keep one digest for {url} in {pfile}", "downloads", "pins")
        return t.decision(req.url, url)
    for pin_key, by_file_name in pins:
        t.requirements.append(Requirement("sha256", d.pins[pin_key], f"downloads.pins.{pin_key}",
                                          by_file_name=by_file_name))
        why = "" if "://" in pin_key else (f" (the caller's file_name {pin_key!r})"
                                           if by_file_name else " (the URL's file name)")
        t.add("require", f"SHA-256 must be {d.pins[pin_key]}{why}", "downloads", "pins",
              pin_key)
    if not pins and req.known_digest:
        t.requirements.append(Requirement("sha256", req.known_digest, "lockfile"))
        t.add("require", f"SHA-256 must be {req.known_digest} (lockfile)", "downloads")
    elif not pins and d.require_digests:
        t.deny("the file has no SHA-256 pin and the policy requires one",
               f"add \"{url}\" = \"<sha256>\" under [downloads.pins] in {pfile}, or lock "
               "it with `safehub lock`", "downloads", "require_digests")
    return t.decision(req.url, url)


def url_file_names(parsed: CanonicalURL) -> list[str]:
    """The file name torch.hub gives a download of ``parsed`` (the path's last segment, as
    the URL spells it) and, when different, that name with its %-escapes decoded."""
    raw = parsed.path.rsplit("/", 1)[-1]
    return list(dict.fromkeys(n for n in (raw, unquote(raw)) if n))


def _name_keys(pins: Mapping[str, str], names: list[str]) -> list[str]:
    return [n for n in names if "://" not in n and n in pins]


def _pin_keys(pins: Mapping[str, str], url: str) -> list[str]:
    """The pins keys that name ``url`` once both are canonical (``url#x``, ``url?`` and
    ``HTTPS://HOST/...`` are the same URL; ``url?a=1`` is another one)."""
    found = []
    for key in pins:
        if "://" not in key:
            continue  # a file name
        try:
            if str(parse_url(key)) == url:
                found.append(key)
        except InvalidIdentifier:
            continue
    return found


def _prefix_for(parsed: CanonicalURL) -> str:
    directory = parsed.path.rsplit("/", 1)[0] + "/"
    return f"{parsed.scheme}://{parsed.netloc}{directory}"


# --- scanned files ----------------------------------------------------------------------------


def _decide_file(policy: LoadedPolicy, req: FileRequest) -> Decision:
    t = _Trail(policy)
    report = req.report
    threshold = Severity(policy.model.scanner.block_severity)
    if report.verdict in (Verdict.UNKNOWN, Verdict.ERROR):
        t.deny(f"{report.path} was not scanned ({report.error or 'unrecognized format'})",
               "convert the file to safetensors or a supported format", "scanner")
        return t.decision(report.path)
    for finding in report.findings:
        what = f"{finding.rule_id} {finding.message}"
        if finding.allowed_by:
            t.add("allow", f"{what} (allowed by {finding.allowed_by})", "scanner",
                  "allowed_globals")
        elif finding.severity.rank >= threshold.rank:
            fix = ("allow exactly this global in [scanner] allowed_globals (or the repo's "
                   f"allowed_globals) if it is a harmless data class: {finding.subject}"
                   if finding.rule_id == "SH101" else "do not load this file")
            t.deny(what, fix, "scanner", "block_severity")
        elif finding.severity is not Severity.INFO or threshold is Severity.INFO:
            t.add("warn", what, "scanner", "block_severity")
    if not t.denied:
        t.add("allow", f"{report.path}: no finding at or above {threshold.value}", "scanner",
              "block_severity")
    return t.decision(report.path)


# --- sandbox ----------------------------------------------------------------------------------


def _decide_sandbox(policy: LoadedPolicy, req: IsolationRequest) -> Decision:
    t = _Trail(policy)
    required = policy.model.sandbox.required_layers
    for layer in required:
        reason = req.available.get(layer, "not known to this safehub")
        if reason is None:
            t.add("allow", f"layer {layer} is available", "sandbox", "required_layers")
        else:
            t.deny(f"required layer {layer} is unavailable: {reason}",
                   f"run on a host that supports {layer} (see `safehub doctor`), or remove it "
                   f"from sandbox.required_layers in {_policy_file(policy)}",
                   "sandbox", "required_layers")
    for layer, reason in req.available.items():
        if layer not in required and reason is not None:
            t.add("warn", f"optional layer {layer} is unavailable: {reason}", "sandbox",
                  "required_layers")
    return t.decision("sandbox")
