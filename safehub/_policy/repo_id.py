"""One identity per GitHub repository, whatever spelling names it.

GitHub resolves ``owner/name`` case-insensitively, so ``pytorch/Vision`` and
``pytorch/vision`` are the same repository. Every trust decision (repo rules,
owner lists, entrypoints, signature scopes), every cache path, lockfile lookup
and audit record uses :class:`RepoId`, which validates the name with GitHub's
grammar (full match: no trailing newline slips past a ``$``) and compares by its
casefolded :attr:`~RepoId.key`. It is shown as the API's ``full_name`` once the
API has answered (:meth:`RepoId.confirmed_by`), else as the caller spelled it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from safehub.errors import InvalidIdentifier

__all__ = ["RepoId", "is_full_sha", "looks_like_sha", "normalize_ref"]

# GitHub's rules: an owner is 1-39 characters, letters, digits and single hyphens, not at
# either end; a repository name is 1-100 of letters, digits, '.', '_', '-'.
_OWNER_RE = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9])*")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_FULL_SHA_RE = re.compile(r"[0-9a-fA-F]{40}")
# git abbreviates commits to at least 4 hex digits; such a ref may also be a branch or tag.
_SHORT_SHA_RE = re.compile(r"[0-9a-fA-F]{4,39}")


def is_full_sha(ref: str) -> bool:
    """Whether ``ref`` is a whole 40-hex commit SHA (any case)."""
    return _FULL_SHA_RE.fullmatch(ref) is not None


def looks_like_sha(ref: str) -> bool:
    """Whether ``ref`` could be read as an abbreviated commit SHA (4-39 hex digits)."""
    return _SHORT_SHA_RE.fullmatch(ref) is not None


def normalize_ref(ref: str) -> str:
    """A full SHA in lower case; any other ref as given (git refs are case-sensitive)."""
    return ref.lower() if is_full_sha(ref) else ref


def _valid_owner(owner: str) -> bool:
    return len(owner) <= 39 and _OWNER_RE.fullmatch(owner) is not None


def _valid_name(name: str) -> bool:
    # "foo.git" is another spelling of "foo" on GitHub's side: ambiguous, so refused.
    return (_NAME_RE.fullmatch(name) is not None and name not in (".", "..")
            and not name.lower().endswith(".git"))


@dataclass(frozen=True, eq=False)
class RepoId:
    """A GitHub repository: equal and hashed by its casefolded ``owner/name``."""

    owner: str
    name: str

    def __post_init__(self) -> None:
        if not _valid_owner(self.owner):
            raise InvalidIdentifier(
                f"{self.owner!r} is not a GitHub owner name", subject=f"{self.owner}/{self.name}",
                fix="an owner is 1-39 letters, digits or single hyphens, not at either end")
        if not _valid_name(self.name):
            raise InvalidIdentifier(
                f"{self.name!r} is not a GitHub repository name",
                subject=f"{self.owner}/{self.name}",
                fix="a repository name is 1-100 letters, digits, '.', '_' or '-' (not '.', "
                "'..', nor ending in '.git')")

    @classmethod
    def parse(cls, text: str) -> RepoId:
        """``owner/name`` to a RepoId; raises :class:`InvalidIdentifier` for anything else."""
        owner, sep, name = text.partition("/")
        if not sep or "/" in name:
            raise InvalidIdentifier(f"{text!r} is not 'owner/name'", subject=text,
                                    fix="name the repository as owner/name")
        return cls(owner, name)

    @classmethod
    def valid(cls, text: str) -> bool:
        """Whether ``text`` is a valid ``owner/name``."""
        try:
            cls.parse(text)
        except InvalidIdentifier:
            return False
        return True

    @property
    def full_name(self) -> str:
        """``owner/name`` as displayed (the API's spelling once confirmed)."""
        return f"{self.owner}/{self.name}"

    @property
    def key(self) -> str:
        """The canonical, casefolded ``owner/name``: what is compared and stored."""
        return self.full_name.casefold()

    @property
    def owner_key(self) -> str:
        """The casefolded owner."""
        return self.owner.casefold()

    @property
    def name_key(self) -> str:
        """The casefolded name."""
        return self.name.casefold()

    def owned_by(self, owners: list[str] | tuple[str, ...] | set[str]) -> bool:
        """Whether the owner is one of ``owners`` (compared casefolded)."""
        mine = self.owner_key
        return any(o.casefold() == mine for o in owners)

    def matches(self, pattern: str) -> bool:
        """Whether ``pattern`` (``owner/name``, ``owner/*``, ``*/name`` or ``*/*``) covers it.

        A ``*`` stands for one whole part; anything else is compared casefolded.
        """
        owner, sep, name = pattern.partition("/")
        if not sep:
            return False
        return ((owner == "*" or owner.casefold() == self.owner_key)
                and (name == "*" or name.casefold() == self.name_key))

    def confirmed_by(self, full_name: object) -> RepoId:
        """This repo spelled as the API's ``full_name``; refuses an answer about another repo."""
        if not isinstance(full_name, str):
            raise InvalidIdentifier(f"the API gave no full_name for {self}", subject=str(self),
                                    fix="check downloads.github_api points at a "
                                    "GitHub-compatible API")
        answer = RepoId.parse(full_name)
        if answer != self:
            raise InvalidIdentifier(
                f"asked the API for {self}, it answered for {answer}", subject=str(self),
                fix=f"the repository was renamed or moved: review {answer} and name it "
                "explicitly if you trust it")
        return answer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RepoId) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.full_name
