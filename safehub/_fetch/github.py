"""``owner/repo[:ref]`` to a full commit SHA through a GitHub-compatible REST API.

Endpoints used (relative to the policy's ``downloads.github_api``):

- ``GET /repos/{owner}/{repo}`` for ``default_branch`` when no ref is given
  (the API says which branch is the default; nothing probes ``main``/``master``);
- ``GET /repos/{owner}/{repo}/commits/{ref}`` for the commit a branch, tag or
  short SHA points at (``sha`` in the JSON answer);
- ``GET /repos/{owner}/{repo}/zipball/{commit}`` for the archive (GitHub
  redirects it to its archive host).

A full 40-hex SHA is used as is: no API call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from safehub._fetch.http import HopCheck, HttpClient, HttpError
from safehub._policy.schema import REPO_RE, SHA1_RE
from safehub.errors import FetchError

__all__ = ["GitHubAPI", "RepoSpec"]

# What git accepts in a ref, minus what would be ambiguous in a URL path.
_REF_RE = re.compile(r"^[A-Za-z0-9._/+@-]{1,255}$")


@dataclass(frozen=True)
class RepoSpec:
    """A parsed ``owner/repo[:ref]``."""

    owner: str
    name: str
    ref: str | None

    @property
    def repo(self) -> str:
        """``owner/name``."""
        return f"{self.owner}/{self.name}"

    @property
    def pinned(self) -> bool:
        """Whether the ref is a full commit SHA."""
        return self.ref is not None and bool(SHA1_RE.match(self.ref))

    def __str__(self) -> str:
        return self.repo + (f":{self.ref}" if self.ref else "")

    @classmethod
    def parse(cls, spec: str) -> RepoSpec:
        """Parse ``owner/repo[:ref]``; raises :class:`FetchError` for anything else."""
        repo, sep, ref = spec.partition(":")
        if not REPO_RE.match(repo):
            raise FetchError(f"{spec!r} is not 'owner/repo[:ref]'", subject=spec,
                             fix="name the repository as owner/repo, optionally :branch, :tag "
                             "or :commit")
        owner, name = repo.split("/", 1)
        if name in (".", ".."):
            raise FetchError(f"{spec!r} is not a repository name", subject=spec,
                             fix="name the repository as owner/repo")
        if sep and not _valid_ref(ref):
            raise FetchError(f"invalid ref {ref!r}", subject=spec,
                             fix="use a branch, tag or commit SHA as the ref")
        if sep and SHA1_RE.match(ref.lower()):
            ref = ref.lower()
        return cls(owner, name, ref if sep else None)


def _valid_ref(ref: str) -> bool:
    if not _REF_RE.match(ref) or ref.startswith(("/", "-", ".")) or ref.endswith(("/", ".")):
        return False
    return ".." not in ref and "//" not in ref and "@{" not in ref and not ref.endswith(".lock")


class GitHubAPI:
    """The few calls safehub makes to a GitHub-compatible REST API."""

    def __init__(self, base: str, http: HttpClient, check: HopCheck):
        self.base = base.rstrip("/")
        self.http = http
        self.check = check

    def _repo_url(self, spec: RepoSpec) -> str:
        return f"{self.base}/repos/{quote(spec.owner, safe='')}/{quote(spec.name, safe='')}"

    def default_branch(self, spec: RepoSpec) -> str:
        """The repository's default branch, as the API reports it."""
        data = self._get(self._repo_url(spec), spec)
        branch = data.get("default_branch") if isinstance(data, dict) else None
        if not isinstance(branch, str) or not _valid_ref(branch):
            raise FetchError(f"the API gave no usable default_branch for {spec.repo}",
                             subject=self._repo_url(spec),
                             fix=f"name the ref explicitly: {spec.repo}:<branch>")
        return branch

    def resolve(self, spec: RepoSpec, ref: str) -> str:
        """The full commit SHA that ``ref`` (branch, tag or SHA) points at."""
        url = f"{self._repo_url(spec)}/commits/{quote(ref, safe='/')}"
        data = self._get(url, spec, ref)
        sha = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(sha, str) or not SHA1_RE.match(sha):
            raise FetchError(f"the API gave no commit SHA for {spec.repo}:{ref}", subject=url,
                             fix="check downloads.github_api points at a GitHub-compatible API")
        if SHA1_RE.match(ref) and sha != ref:
            raise FetchError(f"the API resolved commit {ref} to {sha}", subject=url)
        return sha

    def archive_url(self, spec: RepoSpec, commit: str) -> str:
        """Where the zip archive of ``commit`` is downloaded from."""
        return f"{self._repo_url(spec)}/zipball/{commit}"

    def _get(self, url: str, spec: RepoSpec, ref: str | None = None) -> object:
        try:
            return self.http.get_json(url, check=self.check)
        except HttpError as exc:
            raise explain(exc, spec, ref) from exc


def explain(exc: HttpError, spec: RepoSpec, ref: str | None) -> FetchError:
    """An API error restated for the repository (and ref) it concerns."""
    what = f"{spec.repo}:{ref}" if ref else spec.repo
    if exc.status == 404:
        return FetchError(
            f"{what} was not found ({exc.message})", subject=exc.subject,
            fix=f"check the owner, name and ref of {what}; a private repository needs "
            "GITHUB_TOKEN (or a per-host token) set")
    if exc.status == 422 and ref:
        return FetchError(f"{what}: no commit matches ref {ref!r} ({exc.message})",
                          subject=exc.subject, fix="use an existing branch, tag or commit")
    return FetchError(f"{what}: {exc.message}", subject=exc.subject, fix=exc.fix)
