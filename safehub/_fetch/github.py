"""``owner/repo[:ref]`` to a full commit SHA through a GitHub-compatible REST API.

Endpoints used (relative to the policy's ``downloads.github_api``):

- ``GET /repos/{owner}/{repo}`` for ``full_name`` (which must name the same
  repository, compared case-insensitively: a renamed or moved repository is
  refused, not followed) and, when no ref is given, ``default_branch`` (nothing
  probes ``main``/``master``);
- ``GET /repos/{owner}/{repo}/commits/{ref}`` for the commit a branch, tag or
  short SHA points at (``sha`` in the JSON answer). A ref that looks like an
  abbreviated SHA (4-39 hex digits) must be a prefix of the answer: a branch or
  tag named like the reviewed commit's prefix is refused, not followed (name it
  ``heads/NAME`` or ``tags/NAME``). Short SHAs are never pins: a pin is a full SHA;
- ``GET /repos/{owner}/{repo}/zipball/{commit}`` for the archive (GitHub
  redirects it to its archive host).

A commit chosen by SHA (a full or short SHA, a policy pin, any ref outside the
branch and tag namespaces such as ``refs/pull/N/head``) must belong to the repository
itself: GitHub serves every commit of a fork network under the parent's URLs, so
``pytorch/vision:<sha of a commit pushed to a fork>`` would otherwise run the fork's
code under the parent's trust. :meth:`GitHubAPI.require_in_repo` asks

- ``GET /repos/{owner}/{repo}/compare/{default branch}...{sha}``: ``status`` ``behind``
  or ``identical`` means a commit of the default branch;
- else ``GET /repos/{owner}/{repo}/branches`` and ``/tags`` (one page of 100 each): the
  head of a branch or tag; else ``compare/{name}...{sha}`` for up to
  ``MAX_COMPARES`` of those branches and tags.

A commit none of these reaches is refused (SH307). The caller skips the check for a
branch or tag name (the API answered its head) and for a commit already established
(a checkout record that says so, a lockfile entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from safehub._fetch.http import HopCheck, HttpClient, HttpError
from safehub._policy.repo_id import RepoId, is_full_sha, looks_like_sha, normalize_ref
from safehub._policy.schema import SHA1_RE
from safehub.errors import FetchError, IntegrityError, InvalidIdentifier

__all__ = ["MAX_COMPARES", "GitHubAPI", "RepoSpec", "names_branch_or_tag", "valid_ref"]

# Branches and tags (besides the default branch) a commit is compared with, at most.
MAX_COMPARES = 8

# What git accepts in a ref, minus what would be ambiguous in a URL path.
_REF_RE = re.compile(r"[A-Za-z0-9._/+@-]{1,255}")


@dataclass(frozen=True)
class RepoSpec:
    """A parsed ``owner/repo[:ref]``: the repository's identity and the ref asked for."""

    id: RepoId
    ref: str | None

    @property
    def owner(self) -> str:
        """The owner, as displayed."""
        return self.id.owner

    @property
    def name(self) -> str:
        """The repository name, as displayed."""
        return self.id.name

    @property
    def repo(self) -> str:
        """``owner/name`` as displayed (the API's ``full_name`` once confirmed)."""
        return self.id.full_name

    @property
    def pinned(self) -> bool:
        """Whether the ref is a full commit SHA."""
        return self.ref is not None and bool(SHA1_RE.fullmatch(self.ref))

    def __str__(self) -> str:
        return self.repo + (f":{self.ref}" if self.ref else "")

    @classmethod
    def parse(cls, spec: str) -> RepoSpec:
        """Parse ``owner/repo[:ref]``; raises :class:`InvalidIdentifier` for anything else."""
        repo, sep, ref = spec.partition(":")
        try:
            rid = RepoId.parse(repo)
        except InvalidIdentifier as exc:
            raise InvalidIdentifier(f"{spec!a} is not 'owner/repo[:ref]': {exc.message}",
                                    subject=ascii(spec)[1:-1], fix=exc.fix) from None
        if sep and not valid_ref(ref):
            raise InvalidIdentifier(f"invalid ref {ref!a}", subject=ascii(spec)[1:-1],
                                    fix="use a branch, tag or commit SHA as the ref")
        return cls(rid, normalize_ref(ref) if sep else None)


# git reads ``NAME-gHEX`` (``git describe`` output) as the commit abbreviated HEX whenever
# no ref has that name: any commit the object store holds, a fork's included.
_DESCRIBE_RE = re.compile(r"-g[0-9a-fA-F]{4,}\Z")


def names_branch_or_tag(ref: str) -> bool:
    """Whether the API resolves ``ref`` only through the repository's own branches and tags
    (git tries ``refs/NAME`` first: ``pull/1/head`` is a pull request's head, which lives
    in the fork that opened it; ``v1-g1234abcd`` is read as the commit ``1234abcd`` when
    no branch or tag has that name)."""
    if looks_like_sha(ref) or is_full_sha(ref) or _DESCRIBE_RE.search(ref):
        return False
    if ref.startswith(("refs/heads/", "refs/tags/")):
        return True
    return ref.split("/", 1)[0] not in ("refs", "pull")


def valid_ref(ref: str) -> bool:
    """Whether ``ref`` is a ref safehub asks the API for (git's rules, minus what is
    ambiguous in a URL path)."""
    if not _REF_RE.fullmatch(ref) or ref.startswith(("/", "-", ".")) or ref.endswith(("/", ".")):
        return False
    # git refuses a component that begins with '.'; in a URL path "x/./y" is requested as
    # "x/y", another spelling than the one decided on and locked.
    if any(part.startswith(".") for part in ref.split("/")):
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

    def identify(self, spec: RepoSpec) -> tuple[RepoSpec, str]:
        """The repository as the API names it (its ``full_name``, which must be the same
        repository) and its default branch."""
        data = self._get(self._repo_url(spec), spec, spec.ref)
        if not isinstance(data, dict):
            raise FetchError(f"the API gave no repository for {spec.repo}",
                             subject=self._repo_url(spec),
                             fix="check downloads.github_api points at a GitHub-compatible API")
        confirmed = spec.id.confirmed_by(data.get("full_name"))
        branch = data.get("default_branch")
        if not isinstance(branch, str) or not valid_ref(branch):
            raise FetchError(f"the API gave no usable default_branch for {spec.repo}",
                             subject=self._repo_url(spec),
                             fix=f"name the ref explicitly: {spec.repo}:<branch>")
        return RepoSpec(confirmed, spec.ref), branch

    def default_branch(self, spec: RepoSpec) -> str:
        """The repository's default branch, as the API reports it."""
        return self.identify(spec)[1]

    def resolve(self, spec: RepoSpec, ref: str) -> str:
        """The full commit SHA that ``ref`` (branch, tag or SHA) points at."""
        url = f"{self._repo_url(spec)}/commits/{quote(ref, safe='/')}"
        data = self._get(url, spec, ref)
        sha = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(sha, str) or not SHA1_RE.fullmatch(sha):
            raise FetchError(f"the API gave no commit SHA for {spec.repo}:{ref}", subject=url,
                             fix="check downloads.github_api points at a GitHub-compatible API")
        if (is_full_sha(ref) and sha != ref.lower()) or (
                looks_like_sha(ref) and not sha.startswith(ref.lower())):
            raise IntegrityError(
                f"SH300 the API resolved {spec.repo}:{ref} to commit {sha}, which does not "
                f"start with {ref}", subject=url,
                fix=f"pin the full 40-hex commit SHA; a branch or tag named {ref!r} must be "
                f"asked for as heads/{ref} or tags/{ref}")
        return sha

    def require_in_repo(self, spec: RepoSpec, commit: str, default_branch: str) -> None:
        """Raise unless a branch or tag of the repository itself reaches ``commit`` (see the
        module docstring): not a commit that only a fork holds."""
        if self._reaches(spec, default_branch, commit):
            return
        heads = self._heads(spec, "branches") + self._heads(spec, "tags")
        if any(sha == commit for _, sha in heads):
            return
        others = [name for name, _ in heads if name != default_branch]
        for name in others[:MAX_COMPARES]:
            if self._reaches(spec, name, commit):
                return
        searched = f"the default branch {default_branch!r}" + (
            f" or {min(len(others), MAX_COMPARES)} other branches and tags" if others else "")
        raise IntegrityError(
            f"SH307 commit-not-in-repo: commit {commit} is not on {searched} of "
            f"{spec.repo}; GitHub serves commits of forks under the parent's URLs, so it "
            "may be a fork's", subject=f"{spec.repo}:{commit}",
            fix="load a fork by its own name (OWNER-OF-FORK/REPO:SHA) so that its own "
            f"trust decision applies; if the commit is on an older branch or tag of "
            f"{spec.repo}, name that branch or tag instead of the SHA")

    def _reaches(self, spec: RepoSpec, base: str, commit: str) -> bool:
        """Whether ``commit`` is ``base`` or an ancestor of it (``compare`` status)."""
        url = (f"{self._repo_url(spec)}/compare/{quote(base, safe='/')}...{commit}"
               "?per_page=1")
        try:
            data = self.http.get_json(url, check=self.check)
        except HttpError as exc:
            if exc.status == 404:  # no such base, or no common history
                return False
            raise explain(exc, spec, commit) from exc
        status = data.get("status") if isinstance(data, dict) else None
        return status in ("behind", "identical")

    def _heads(self, spec: RepoSpec, kind: str) -> list[tuple[str, str]]:
        """(name, head commit) of the first 100 branches or tags."""
        url = f"{self._repo_url(spec)}/{kind}?per_page=100"
        data = self._get(url, spec)
        heads = []
        for item in data if isinstance(data, list) else []:
            if not isinstance(item, dict):
                continue
            name, commit = item.get("name"), item.get("commit")
            sha = commit.get("sha") if isinstance(commit, dict) else None
            if isinstance(name, str) and valid_ref(name) and isinstance(sha, str) \
                    and SHA1_RE.fullmatch(sha):
                heads.append((name, sha))
        return heads

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
            "GITHUB_TOKEN (or a token for its origin) set")
    if exc.status == 422 and ref:
        return FetchError(f"{what}: no commit matches ref {ref!r} ({exc.message})",
                          subject=exc.subject, fix="use an existing branch, tag or commit")
    return FetchError(f"{what}: {exc.message}", subject=exc.subject, fix=exc.fix)
