"""The values discovery hands to the rest of the audit: what to check and what is known.

A :class:`FileTarget` is one model file as a user would load it (for a Hugging Face
snapshot entry: the snapshot path, backed by its blob). A :class:`RepoTarget` is a
folder that is a unit of trust (a torch.hub checkout, a safehub checkout, a Hugging
Face snapshot, a folder the user named): repository-level findings attach to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from safehub.findings import Finding, Skipped
from safehub.rules import RULES, Severity

__all__ = [
    "Discovery",
    "Expectation",
    "FileTarget",
    "Provenance",
    "RepoTarget",
    "Source",
    "make_finding",
]

Source = Literal["torch-hub", "safehub-cache", "huggingface", "local", "remote"]


@dataclass(frozen=True)
class Provenance:
    """Where a file or folder came from, as far as the cache records it.

    ``source`` names the layout; ``repo`` is ``owner/name`` (GitHub) or the Hugging
    Face repo id; ``revision`` a commit (HF snapshot, safehub checkout); ``ref`` the
    ref that was asked for (torch.hub folder name, safehub record); ``refs`` the HF
    refs that point at the revision; ``url`` the download URL (safehub record,
    lockfile); ``record`` the file that holds the recorded digests.
    """

    source: Source
    repo: str | None = None
    repo_type: str | None = None
    revision: str | None = None
    ref: str | None = None
    refs: tuple[str, ...] = ()
    url: str | None = None
    path_in_repo: str | None = None
    record: str | None = None
    downloaded: str | None = None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict without the unknown fields."""
        out: dict[str, object] = {"source": self.source}
        for name in ("repo", "repo_type", "revision", "ref", "url", "path_in_repo", "record",
                     "downloaded"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.refs:
            out["refs"] = list(self.refs)
        return out

    def describe(self) -> str:
        """One line for humans."""
        parts: list[str] = [self.source]
        if self.repo:
            where = self.repo
            if self.revision:
                where += f"@{self.revision}"
            elif self.ref:
                where += f":{self.ref}"
            parts.append(where)
        if self.refs:
            parts.append(f"refs {', '.join(self.refs)}")
        if self.path_in_repo:
            parts.append(self.path_in_repo)
        if self.url:
            parts.append(self.url)
        return " ".join(parts)


@dataclass(frozen=True)
class Expectation:
    """A digest a file must have, and who says so.

    ``algorithm`` is ``sha256`` (``digest`` may be a prefix, as torch's file names
    carry) or ``git-sha1`` (a Git blob id, as Hugging Face names non-LFS blobs).
    ``rule_id`` is SH400 for digests recorded when the file was downloaded and SH300
    for pins (lockfile, policy).
    """

    algorithm: Literal["sha256", "git-sha1"]
    digest: str
    source: str
    rule_id: str
    size: int | None = None
    others: tuple[str, ...] = ()  # further acceptable digests (several URLs, one file name)

    @property
    def full(self) -> bool:
        return len(self.digest) == (64 if self.algorithm == "sha256" else 40)

    def matches(self, digest: str, size: int) -> bool:
        if self.size is not None and self.size != size:
            return False
        return any(digest.startswith(d) for d in (self.digest, *self.others))


@dataclass(frozen=True)
class FileTarget:
    """One file to audit.

    ``path`` is how it is reported; ``real`` is what is opened (the blob behind a
    Hugging Face snapshot link). ``repo`` is the GitHub ``owner/name`` whose policy
    rules (allowed globals) apply to its scan. ``model_only``: content safehub does
    not recognise is skipped unless the name says it is a model file (as ``scan``
    does in folders). ``findings`` were made during discovery. ``managed`` names the
    cache that owns the file when ``--fix`` must leave it alone, and why. ``url`` and
    ``name`` are the download URL and file name where known.
    """

    path: str
    real: str
    provenance: Provenance
    expectations: tuple[Expectation, ...] = ()
    repo: str | None = None
    model_only: bool = True
    findings: tuple[Finding, ...] = ()
    managed: str = ""
    url: str | None = None
    name: str = ""  # the file name a download would have had (pins by file name)
    error: str = ""  # why it cannot be opened at all (a link to nothing)


@dataclass(frozen=True)
class RepoTarget:
    """A folder that is a unit of trust; repository-level findings attach to it.

    ``members`` maps model-relative paths to the real files (for symlink farms such as
    Hugging Face snapshots); empty means the folder holds its files itself.
    ``signature`` is where its OMS signature would be.
    """

    path: str
    provenance: Provenance
    kind: str = "folder"  # shown as the report entry's format
    findings: tuple[Finding, ...] = ()
    members: tuple[tuple[str, str], ...] = ()
    signature: str | None = None


@dataclass
class Discovery:
    """Everything found under the roots."""

    files: list[FileTarget] = field(default_factory=list)
    repos: list[RepoTarget] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    caches: list[tuple[str, str]] = field(default_factory=list)  # (layout, root)

    def extend(self, other: Discovery) -> None:
        self.files.extend(other.files)
        self.repos.extend(other.repos)
        self.skipped.extend(other.skipped)
        self.caches.extend(other.caches)


def make_finding(rule_id: str, message: str, path: str, *, block_at: Severity,
                 subject: str = "", severity: Severity | None = None, location: str = "",
                 payload: str = "") -> Finding:
    """A finding of ``rule_id`` at its catalogue severity (unless given)."""
    return Finding(rule_id=rule_id, severity=severity or RULES[rule_id].severity,
                   message=message, path=path, location=location, subject=subject,
                   payload=payload, block_at=block_at)
