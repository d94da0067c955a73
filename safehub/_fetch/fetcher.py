"""The fetcher: repos and files under one policy, cache and lockfile.

The public face is :mod:`safehub.fetch` (which documents the guarantees); the
implementation lives here so that the private packages (the hub runner, enforce)
depend on it, not on the facade.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import urlsplit

from safehub._fetch.archive import ArchiveLimits
from safehub._fetch.cache import CacheLayout, RepoRecord
from safehub._fetch.credentials import Credentials
from safehub._fetch.github import GitHubAPI, RepoSpec, names_branch_or_tag
from safehub._fetch.hops import api_hops, recheck_hops, weights_hops
from safehub._fetch.http import (
    DownloadResult,
    HopCheck,
    HttpClient,
    HttpSettings,
    ProgressCallback,
    transfer_limits,
)
from safehub._fetch.location import SAFEHUB_SUBDIR, get_dir
from safehub._fetch.lockfile import (
    LOCKFILE_NAME,
    LockedFile,
    LockedRepo,
    Lockfile,
    local_tree_sha256,
    local_tree_size,
    repo_key,
)
from safehub._fetch.offline import cached_download_decision, offline_requested
from safehub._fetch.repos import Checkout, RepoCache, RepoSource
from safehub._fetch.torch_cache import MIN_VOUCHING_PREFIX
from safehub._fetch.torch_repos import LocalTree
from safehub._fetch.weights import Expected, FileCache, LocalSource, hash_prefix_of
from safehub._policy.decide import (
    Decision,
    DownloadRequest,
    FileRequest,
    RepoRequest,
    TrustRepo,
)
from safehub._policy.paths import canonical_path
from safehub._policy.policy import Policy, load_policy
from safehub._policy.urls import canonical_url
from safehub.errors import FetchError, IntegrityError, PolicyError, PolicyViolation
from safehub.findings import FileReport

__all__ = ["CachedFile", "Fetcher", "OpenedFile", "RepoCheckout"]

log = logging.getLogger("safehub.fetch")


@dataclass(frozen=True)
class RepoCheckout:
    """A verified, read-only checkout of one commit in the cache."""

    path: Path
    owner: str
    name: str
    ref: str | None  # as requested (None: the default branch)
    commit: str
    archive_sha256: str
    tree_sha256: str
    decision: Decision  # the policy's RepoRequest decision (requirements: signature, sandbox)
    from_cache: bool
    # Scans of the files in the checkout that are models (pickle, torch, numpy, safetensors,
    # ...), each allowed by the policy; source code and other files are not models.
    reports: tuple[FileReport, ...] = ()

    @property
    def repo(self) -> str:
        """``owner/name``."""
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class CachedFile:
    """A downloaded file in the cache: verified, scanned, and allowed by the policy."""

    path: Path
    url: str
    sha256: str
    size: int
    report: FileReport  # the scan of exactly these bytes
    decision: Decision  # the DownloadRequest decision (requirements: sha256, signature)
    file_decision: Decision  # the FileRequest decision on the scan
    from_cache: bool


class OpenedFile:
    """A verified, scanned and allowed file, still open: load from :attr:`file`.

    A context manager; closing it closes the file.
    """

    def __init__(self, info: CachedFile, fh: BinaryIO):
        self.info = info
        self.file = fh

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenedFile({self.info.url!r}, sha256={self.info.sha256})"


# A commit the API answered for a branch or tag name, or one a lockfile holds.
_ESTABLISHED = "<established>"


class Fetcher:
    """Fetches repos and files under one policy, cache and (optional) lockfile.

    ``policy``: a :class:`~safehub.policy.Policy`, preset name or path (None: the
    default selection). ``hub_dir``: torch's hub directory (default
    :func:`safehub.hub.get_dir`); the cache is ``<hub_dir>/safehub`` unless
    ``cache_dir`` names another folder. ``lockfile``: a :class:`Lockfile` or path;
    locked refs and digests are used, and what is fetched is added to it in memory
    (``fetcher.lockfile.save()`` writes it). ``frozen``: refuse anything the
    lockfile does not list. ``offline``: no network at all (also on with
    ``SAFEHUB_OFFLINE=1`` or policy ``downloads.offline``). ``progress`` receives
    :class:`Progress` reports for downloads. ``tokens``: tokens keyed by origin,
    ``{"https://ghe.example.com:8443": "..."}`` (see :mod:`safehub._fetch.credentials`).
    ``http``: network settings; its ``deadline``/``min_rate`` may only tighten the
    policy's ``downloads.deadline_s``/``downloads.min_rate_kb_s``.
    ``torch_model_dir``: where torch.hub keeps its downloads (default
    ``<hub_dir>/checkpoints``); a file there is imported, once verified, when the cache
    misses (see :mod:`safehub._fetch.torch_cache`).
    ``also``: further policies that must allow every repository and download too, whose
    pins and signature rules apply as ``policy``'s own and whose scans must pass (the
    outer scopes of nested ``enforce()`` calls). Network settings, the API and the cache
    are ``policy``'s; an ``also`` policy naming another ``downloads.github_api`` refuses
    repositories (the same name would be another server's repository).
    """

    def __init__(self, policy: Policy | str | os.PathLike[str] | None = None, *,
                 hub_dir: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 lockfile: Lockfile | str | os.PathLike[str] | None = None,
                 frozen: bool = False, offline: bool | None = None,
                 progress: ProgressCallback | None = None,
                 http: HttpSettings | None = None,
                 archive_limits: ArchiveLimits | None = None,
                 tokens: dict[str, str] | None = None,
                 torch_model_dir: str | os.PathLike[str] | None = None,
                 also: Sequence[Policy] = ()):
        self.policy = load_policy(policy)
        self.also = tuple(p for p in also if p is not self.policy)
        self.hub_dir = Path(os.fspath(hub_dir) if hub_dir is not None else get_dir())
        self.torch_model_dir = Path(os.path.expanduser(os.fspath(torch_model_dir))) \
            if torch_model_dir is not None else self.hub_dir / "checkpoints"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else \
            self.hub_dir / SAFEHUB_SUBDIR
        if frozen and lockfile is None:
            raise PolicyError("frozen=True needs a lockfile", subject="frozen",
                              fix=f"pass lockfile= (usually {LOCKFILE_NAME})")
        if lockfile is None or isinstance(lockfile, Lockfile):
            self.lockfile = lockfile
        else:
            self.lockfile = Lockfile.load(lockfile, missing_ok=not frozen)
        self.frozen = frozen
        self.offline = offline_requested(self.policy, offline)
        self.progress = progress
        downloads = self.policy.model.downloads
        self.api_base = downloads.github_api.rstrip("/")
        self.max_bytes = downloads.max_size_mb << 20
        # Every request keeps the policy's overall deadline (``http`` may only tighten it).
        settings = http or HttpSettings()
        self._http = HttpClient(settings, Credentials(self.api_base, tokens),
                                transfer_limits(settings, self.policy))
        self._layout = CacheLayout(self.cache_dir)
        self._repos = RepoCache(self._layout, archive_limits or ArchiveLimits())
        self._files = FileCache(self._layout)
        self._github = GitHubAPI(self.api_base, self._http, self._api_hops())

    # --- repositories --------------------------------------------------------------------

    def fetch_repo(self, spec: str | RepoSpec, *, force_reload: bool = False,
                   trust_repo: TrustRepo = None, entrypoint: str | None = None
                   ) -> RepoCheckout:
        """The verified checkout of ``owner/repo[:ref]`` (policy, pins and lockfile applied).

        A cached full commit SHA (asked for, locked, or pinned by the policy with no
        ref given) makes no network request at all.
        """
        parsed = spec if isinstance(spec, RepoSpec) else RepoSpec.parse(spec)
        request = RepoRequest(parsed.repo, ref=parsed.ref, entrypoint=entrypoint,
                              trust_repo=trust_repo, hub_dir=str(self.hub_dir))
        decision = self._all_repo_decisions(request)
        locked = self.lockfile.repo(parsed.repo, parsed.ref) if self.lockfile else None
        if self.frozen and locked is None:
            self._refuse_unlocked(repo_key(parsed.repo, parsed.ref),
                                  f"`safehub lock {parsed}`")
        pin = decision.requirement("commit")
        try:
            commit, parsed, branch = self._commit_for(parsed, pin.value if pin else None, locked)
        except FetchError as exc:
            raise self._torch_folder_unverified(parsed) or exc from None
        # Chosen by SHA (asked for, pinned, or named by a lockfile, which anyone who can edit
        # it controls): it must be the repo's own, not a fork's. The record says so only once
        # the API answered a name for it or this check passed.
        if branch != _ESTABLISHED:
            parsed = self._require_in_repo(parsed, commit, branch, locked)
        if pin is not None and commit != pin.value:
            raise IntegrityError(
                f"SH300 {parsed} resolved to commit {commit}, but the policy pins {pin.value}",
                subject=str(parsed),
                fix=f"use {parsed.repo}:{pin.value}, or update {pin.rule} after reviewing "
                "the new commit")
        source = RepoSource(
            api=self.api_base, archive_url=self._github.archive_url(parsed, commit),
            in_repo=True,  # established above: a head the API named, or the fork check
            download=None if self.offline else self._archive_downloader(parsed, commit))

        hop_check = self._api_hops()

        def accept(record: RepoRecord) -> None:
            # The redirect chain the archive came through, under today's policy: a cached
            # checkout is refused wherever downloading it again would be.
            recheck_hops(hop_check, record.archive_url or source.archive_url, record.hops, "")
            if locked is not None:
                _check_locked_repo(record, locked, self.lockfile)

        checkout = self._repos.obtain(parsed.owner, parsed.name, commit, ref=parsed.ref or "",
                                      source=source, force_reload=force_reload, accept=accept,
                                      local=self._torch_folder(parsed, commit, locked))
        reports = self._scan_checkout(checkout, parsed.repo)
        if self.lockfile is not None and not self.frozen:
            self.lockfile.add_repo(_locked_repo(checkout, parsed.ref))
        return _checkout_result(checkout, parsed, decision, reports)

    def _api_hops(self) -> HopCheck:
        return _every_hop_check([api_hops(p, self.api_base) for p in (self.policy, *self.also)])

    def _all_repo_decisions(self, request: RepoRequest) -> Decision:
        """``policy``'s decision, with the requirements of every ``also`` policy (each must
        allow the request); two different commit pins cannot both hold and refuse."""
        decision = self.policy.check(request)
        if not self.also:
            return decision
        requirements = list(decision.requirements)
        for other in self.also:
            api = other.model.downloads.github_api.rstrip("/")
            if api != self.api_base:
                raise PolicyViolation(
                    f"policy {other.name!r} decides repositories of {api}, but this fetch "
                    f"asks {self.api_base}: its decision about {request.repo} would be about "
                    "another server's repository", subject=request.repo,
                    fix="use one downloads.github_api in every active policy",
                    trail=[f"deny    policy {other.name}: downloads.github_api = {api}"])
            requirements += [r for r in other.check(request).requirements
                             if r not in requirements]
        commits = {r.value for r in requirements if r.kind == "commit"}
        if len(commits) > 1:
            raise PolicyViolation(
                f"the active policies pin {request.repo} to different commits "
                f"({', '.join(sorted(commits))}): no commit satisfies them all",
                subject=request.repo, fix="pin the same commit in every policy",
                trail=[f"deny    {r.rule}: commit {r.value}" for r in requirements
                       if r.kind == "commit"])
        return replace(decision, requirements=tuple(requirements))

    def _check_file(self, report: FileReport, repo: str | None) -> Decision:
        """``policy``'s decision on a scan; every ``also`` policy scans and decides too."""
        return self.policy.decide(FileRequest(report, repo)).raise_if_denied()

    def _also_scan(self, fh: BinaryIO, name: str, repo: str | None) -> None:
        """Scan ``fh`` under every ``also`` policy's own options; each must allow it."""
        from safehub._scanner.entry import scan_file

        for other in self.also:
            fh.seek(0)
            report = scan_file(fh, name, options=other.scan_options(repo))
            other.decide(FileRequest(report, repo)).raise_if_denied()
        fh.seek(0)

    def _torch_folder(self, spec: RepoSpec, commit: str,
                      locked: LockedRepo | None) -> LocalTree | None:
        """torch.hub's folder of ``spec``, usable only where the lockfile verifies it."""
        from safehub._fetch.torch_repos import repo_folders, repo_source

        return repo_source(repo_folders(self.hub_dir, spec.owner, spec.name, spec.ref, commit),
                           repo=spec.repo, ref=spec.ref, commit=commit, locked=locked,
                           lockfile=self.lockfile_path or "the lockfile", offline=self.offline)

    def _torch_folder_unverified(self, spec: RepoSpec) -> FetchError | None:
        """Offline, a ref that cannot be resolved: torch.hub's folder for it does not help
        (a folder name is a ref, not a commit); say so, and how to fill the cache."""
        from safehub._fetch.torch_repos import repo_folders, unverified

        folders = repo_folders(self.hub_dir, spec.owner, spec.name, spec.ref, None)
        if not self.offline or not folders:
            return None
        return unverified(folders[0], repo=spec.repo, ref=spec.ref, commit=None)

    def _scan_checkout(self, checkout: Checkout, repo: str) -> tuple[FileReport, ...]:
        """Scan every file of a checkout; model files must be allowed by the policy."""
        from safehub._scanner.entry import scan_file

        options = self.policy.scan_options(repo)
        reports = []
        for rel in sorted(checkout.record.files):
            fd = os.open(checkout.path / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                name = f"{repo}@{checkout.record.commit[:12]}/{rel}"
                report = scan_file(fh, name, options=options)
                if report.format == "unknown" and not report.error and all(
                        f.rule_id == "SH190" for f in report.findings):
                    continue  # not a model format: code, text, images
                self._check_file(report, repo)
                self._also_scan(fh, name, repo)
            reports.append(report)
        return tuple(reports)

    def _commit_for(self, spec: RepoSpec, pinned: str | None, locked: LockedRepo | None
                    ) -> tuple[str, RepoSpec, str | None]:
        """The commit to use, the spec spelled as the API (or the lockfile) names it, and
        whether the commit is known to be the repository's own: ``_ESTABLISHED`` (a branch
        or tag head the API answered, now or in a cached checkout recorded as the repo's
        own), else the default branch when it is already known (None when not). A lockfile
        commit is not established: the file is an input (a pull request can change it),
        so it is checked as a SHA would be."""
        if spec.pinned and spec.ref is not None:
            return spec.ref, spec, None
        if locked is not None:
            return locked.commit, RepoSpec(spec.id.confirmed_by(locked.repo), spec.ref), None
        if spec.ref is None and pinned is not None:
            return pinned, spec, None  # the policy pins it: no default-branch lookup
        by_name = spec.ref is None or names_branch_or_tag(spec.ref)
        if self.offline:
            ref = spec.ref or ""
            for record in self._repos.records(spec.owner, spec.name):
                if record.ref == ref:
                    log.info("offline: %s resolves to %s (cached %s)", spec, record.commit,
                             record.time)
                    # Only a record that says the commit was established as the repo's
                    # own vouches for it (one written before safehub recorded that, e.g.
                    # from an unchecked lockfile entry, says nothing).
                    return record.commit, spec, \
                        _ESTABLISHED if by_name and record.in_repo else None
            raise FetchError(
                f"offline: cannot resolve {spec}: no cached checkout of "
                f"{'the default branch' if not spec.ref else repr(spec.ref)}",
                subject=str(spec), fix=f"run once online, lock it (`safehub lock {spec}`), or "
                "ask for a full commit SHA that is cached")
        # The API names the repository (its full_name must be this one) before any ref of
        # it is resolved.
        confirmed, default_branch = self._github.identify(spec)
        commit = self._github.resolve(confirmed, spec.ref or default_branch)
        return commit, confirmed, _ESTABLISHED if by_name else default_branch

    def _require_in_repo(self, spec: RepoSpec, commit: str, default_branch: str | None,
                         locked: LockedRepo | None = None) -> RepoSpec:
        """Refuse a commit that only a fork holds (SH307; see safehub._fetch.github). A
        checkout record that says it was established costs no request."""
        record = self._repos.record(spec.owner, spec.name, commit)
        if record is not None and record.in_repo:
            return spec
        if self.offline and locked is not None:
            raise FetchError(
                f"offline: {self.lockfile_path or 'the lockfile'} names commit {commit} for "
                f"{repo_key(spec.repo, spec.ref)}, but safehub has not confirmed that it "
                f"belongs to {spec.repo} and not to a fork (a lockfile is an input: anyone "
                "who can edit it chooses the commit)", subject=f"{spec.repo}:{commit}",
                fix=f"run once online with this lockfile (`safehub lock --frozen --lockfile "
                f"{self.lockfile_path or 'safehub.lock'}`, or the same load without "
                "SAFEHUB_OFFLINE): the check is recorded in the cache for later offline runs")
        if self.offline:
            raise FetchError(
                f"offline: cannot confirm that commit {commit} belongs to {spec.repo} and not "
                "to a fork (no checkout of it was cached since safehub checks this)",
                subject=f"{spec.repo}:{commit}",
                fix="run once online, or lock it with `safehub lock` and use the lockfile")
        if default_branch is None:
            spec, default_branch = self._github.identify(spec)
        self._github.require_in_repo(spec, commit, default_branch)
        if record is not None:  # cached before the check existed: established now
            self._repos.mark_in_repo(spec.owner, spec.name, commit)
        return spec

    def _archive_downloader(self, spec: RepoSpec, commit: str
                            ) -> Callable[[BinaryIO], DownloadResult]:
        url = self._github.archive_url(spec, commit)
        check = self._api_hops()
        # An archive is hardly bigger than what it expands to (zip bombs are judged later).
        cap = min(self.max_bytes, self._repos.limits.max_total_size + (64 << 20))

        def download(fh: BinaryIO) -> DownloadResult:
            from safehub._fetch.github import explain
            from safehub._fetch.http import HttpError

            try:
                return self._http.download(url, fh, check=check, max_bytes=cap,
                                           progress=self.progress, authenticate=True)
            except HttpError as exc:
                raise explain(exc, spec, commit) from exc
        return download

    # --- files ---------------------------------------------------------------------------

    def open_url(self, url: str, *, file_name: str | None = None, check_hash: bool = False,
                 hash_prefix: str | None = None, repo: str | None = None) -> OpenedFile:
        """The verified, scanned and allowed file for ``url``, open for loading.

        ``file_name`` is torch.hub's: it is matched against ``downloads.pins`` and,
        with ``check_hash``, its ``-<hex>.`` part is a required SHA-256 prefix
        (``hash_prefix`` gives one directly). The cache itself is keyed by URL.
        Every ``also`` policy decides the URL and its redirect hops, adds its pins and
        scans the file too.
        ``repo`` is the ``owner/name`` on whose behalf the file is fetched: its
        policy rules (extra allowed globals) apply to the scan.

        ``url`` is canonicalised first (:func:`safehub._policy.urls.canonical_url`):
        that one string is decided on, looked up in pins and the lockfile, used as
        the cache key and requested. A malformed URL raises
        :class:`~safehub.errors.InvalidIdentifier`.
        """
        url = canonical_url(url)
        locked = self.lockfile.file(url) if self.lockfile else None
        if self.frozen and locked is None:
            self._refuse_unlocked(url, f"`safehub lock --url {url}`")
        request = DownloadRequest(url, file_name=file_name, repo=repo,
                                  known_digest=locked.sha256 if locked else None)
        decision = (cached_download_decision(self.policy, request) if self.offline
                    else self.policy.decide(request)).raise_if_denied()
        also_required = [pin for other in self.also for pin in (
            cached_download_decision(other, request) if self.offline
            else other.decide(request)).raise_if_denied().requirements]
        expected = self._expected(url, decision, locked, file_name, check_hash, hash_prefix)
        expected += [Expected(pin.value, f"an outer enforce() policy's {pin.rule}",
                              vouches=not pin.by_file_name)
                     for pin in also_required if pin.kind == "sha256"]
        check = _every_hop_check([weights_hops(p) for p in (self.policy, *self.also)])

        def download(fh: BinaryIO) -> DownloadResult:
            return self._http.download(url, fh, check=check, max_bytes=self.max_bytes,
                                       progress=self.progress)

        entry = self._files.open(url, expected=expected,
                                 download=None if self.offline else download, repo=repo,
                                 local=self._torch_copy(url, file_name, expected, repo))
        try:
            from safehub._scanner.entry import scan_file

            if entry.from_cache:  # the hops the bytes came through, under today's policy
                recheck_hops(check, url, entry.record.hops, entry.record.final_url)
            report = scan_file(entry.fh, url, options=self.policy.scan_options(repo))
            file_decision = self._check_file(report, repo)
            self._also_scan(entry.fh, url, repo)
        except BaseException:
            entry.fh.close()
            raise
        record = entry.record
        if self.lockfile is not None and not self.frozen:
            self.lockfile.add_file(url, LockedFile(sha256=record.sha256, size=record.size,
                                                   repo=repo))
        info = CachedFile(path=entry.path, url=url, sha256=record.sha256, size=record.size,
                          report=report, decision=decision, file_decision=file_decision,
                          from_cache=entry.from_cache)
        return OpenedFile(info, entry.fh)

    def _torch_copy(self, url: str, file_name: str | None, expected: list[Expected],
                    repo: str | None) -> LocalSource | None:
        """torch.hub's download of ``url``, if it has one, as a verified source."""
        from safehub._fetch.torch_cache import checkpoint_path, checkpoint_source

        path = checkpoint_path(self.torch_model_dir, url, file_name)
        if path is None:
            return None
        return checkpoint_source(path, url=url, expected=expected, policy=self.policy,
                                 repo=repo, offline=self.offline, max_bytes=self.max_bytes)

    def fetch_url(self, url: str, *, file_name: str | None = None, check_hash: bool = False,
                  hash_prefix: str | None = None, repo: str | None = None) -> CachedFile:
        """As :meth:`open_url`, closing the file: for callers that only need it cached.

        Whoever loads ``path`` later should prefer :meth:`open_url` (the bytes could
        change between this check and that load).
        """
        with self.open_url(url, file_name=file_name, check_hash=check_hash,
                           hash_prefix=hash_prefix, repo=repo) as opened:
            return opened.info

    def _expected(self, url: str, decision: Decision, locked: LockedFile | None,
                  file_name: str | None, check_hash: bool, hash_prefix: str | None
                  ) -> list[Expected]:
        expected = []
        pins = [r for r in decision.requirements if r.kind == "sha256"]
        for pin in pins:
            source = "the lockfile" if pin.rule == "lockfile" else f"policy {pin.rule}"
            # A pin on the caller's file_name binds the bytes but not to this URL: it is
            # required, but cannot vouch for torch.hub's copy standing in for the URL.
            expected.append(Expected(pin.value, source, vouches=not pin.by_file_name))
        if locked is not None and all(pin.value != locked.sha256 for pin in pins):
            expected.append(Expected(locked.sha256, f"lockfile {self.lockfile_path}"))
        if hash_prefix is not None:
            if not all(c in "0123456789abcdefABCDEF" for c in hash_prefix) or \
                    len(hash_prefix) > 64:
                raise FetchError(f"hash_prefix {hash_prefix!r} is not a hex SHA-256 prefix",
                                 subject=url, fix="pass the file's SHA-256 (or a prefix)")
            if hash_prefix:
                # Required whatever its length; it vouches for torch.hub's copy standing in
                # for the URL only from 8 hex digits on (the bar a prefix in the URL's own
                # name must reach): a 1-digit prefix matches one file in 16.
                expected.append(Expected(hash_prefix.lower(), "hash_prefix",
                                         vouches=len(hash_prefix) >= MIN_VOUCHING_PREFIX))
        if check_hash:
            name = file_name or os.path.basename(urlsplit(url).path)
            prefix = hash_prefix_of(name)
            if prefix:
                # The caller's file_name is any name it likes: its prefix is checked, as
                # torch.hub checks it, but vouches for nothing (torch_cache reads the URL's
                # own name for that).
                expected.append(Expected(prefix, f"the hash prefix in the file name {name!r}",
                                         vouches=False))
        return expected

    # --- helpers -------------------------------------------------------------------------

    @property
    def lockfile_path(self) -> str:
        """The lockfile's path, or "" without one."""
        return str(self.lockfile.path) if self.lockfile else ""

    # --- local folders ---------------------------------------------------------------------

    def check_local(self, path: str | os.PathLike[str],
                    contents: str | os.PathLike[str] | None = None) -> str | None:
        """A local repository folder against the lockfile's ``[paths]`` entry (looked up by
        canonical real path); returns its ``tree_sha256`` when it was hashed. ``contents``:
        a copy of the folder to hash instead (the copy that will run).

        A locked folder whose files differ is an :class:`IntegrityError`; with ``frozen``,
        an unlisted folder is refused. Without a lockfile (or entry) nothing is hashed."""
        if self.lockfile is None:
            return None
        locked = self.lockfile.local(path)
        if locked is None:
            if self.frozen:
                self._refuse_unlocked(canonical_path(path), f"`safehub lock --path {path}`")
            return None
        actual = local_tree_sha256(path if contents is None else contents)
        if actual != locked.tree_sha256:
            raise IntegrityError(
                f"SH300 the files of {canonical_path(path)} differ from {self.lockfile_path} "
                f"(tree sha256 {actual}, locked {locked.tree_sha256})",
                subject=os.fspath(path), fix="do not use it; if the change is expected, "
                "re-lock with `safehub lock --path` after reviewing it")
        return actual

    def locked_size(self, path: str | os.PathLike[str]) -> int | None:
        """A locked folder's recorded total size, once its files' present total is shown
        to equal it (:class:`IntegrityError` if not: nothing read or copied); None when
        the lockfile has no size for it (written before sizes were recorded)."""
        locked = self.lockfile.local(path) if self.lockfile is not None else None
        if locked is None or locked.size is None:
            return None
        actual = local_tree_size(path)
        if actual != locked.size:
            raise self.size_mismatch(path, f"{actual} bytes, locked {locked.size}")
        return locked.size

    def size_mismatch(self, path: str | os.PathLike[str], what: str) -> IntegrityError:
        return IntegrityError(
            f"SH300 the files of {canonical_path(path)} differ from {self.lockfile_path} "
            f"({what})", subject=os.fspath(path), fix="do not use it; if the change is "
            "expected, re-lock with `safehub lock --path` after reviewing it")

    def _refuse_unlocked(self, what: str, command: str) -> None:
        raise PolicyViolation(
            f"{what} is not in the frozen lockfile {self.lockfile_path}", subject=what,
            fix=f"add it with {command} (without --frozen), review, commit the lockfile",
            trail=[f"deny    lockfile ({self.lockfile_path}): frozen, and {what} is not "
                   "listed"])

    def __repr__(self) -> str:
        return (f"Fetcher(policy={self.policy.name!r}, cache={str(self.cache_dir)!r}, "
                f"offline={self.offline}, frozen={self.frozen})")


def _check_locked_repo(record: RepoRecord, locked: LockedRepo,
                       lockfile: Lockfile | None) -> None:
    where = str(lockfile.path) if lockfile else "the lockfile"
    if record.tree_sha256 != locked.tree_sha256:
        raise IntegrityError(
            f"SH300 the files of {record.owner}/{record.name}@{record.commit} differ from "
            f"{where} (tree sha256 {record.tree_sha256}, locked {locked.tree_sha256})",
            subject=f"{record.owner}/{record.name}@{record.commit}",
            fix="do not use it; if the change is expected, re-lock with `safehub lock` after "
            "reviewing it")
    if record.archive_sha256 != locked.archive_sha256:
        log.warning("%s/%s@%s: the archive bytes differ from %s but every file is identical "
                    "(archives are regenerated by the server)", record.owner, record.name,
                    record.commit, where)


def _locked_repo(checkout: Checkout, ref: str | None) -> LockedRepo:
    r = checkout.record
    return LockedRepo(repo=f"{r.owner}/{r.name}", source=r.source, api=r.api, ref=ref or "",
                      commit=r.commit, archive_sha256=r.archive_sha256,
                      tree_sha256=r.tree_sha256)


def _every_hop_check(checks: list[HopCheck]) -> HopCheck:
    """A hop check that every one of ``checks`` must pass."""
    if len(checks) == 1:
        return checks[0]

    def check(url: str, previous: str | None) -> None:
        for one in checks:
            one(url, previous)
    return check


def _checkout_result(checkout: Checkout, spec: RepoSpec, decision: Decision,
                     reports: tuple[FileReport, ...]) -> RepoCheckout:
    r = checkout.record
    return RepoCheckout(path=checkout.path, owner=spec.owner, name=spec.name, ref=spec.ref,
                        commit=r.commit, archive_sha256=r.archive_sha256,
                        tree_sha256=r.tree_sha256, decision=decision,
                        from_cache=checkout.from_cache, reports=reports)


# Public as safehub.fetch.*: pickles and help() name the public path.
for _cls in (RepoCheckout, CachedFile, OpenedFile, Fetcher):
    _cls.__module__ = "safehub.fetch"
del _cls
