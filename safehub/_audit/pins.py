"""Digests pinned outside the cache: ``safehub.lock`` and the policy's ``downloads.pins``.

The lockfile pins files by URL; a torch ``checkpoints/`` file only has a name, so
pins are also looked up by the URL's file name (several URLs may share one). The
policy pins by URL or by file name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from safehub._audit.model import Expectation
from safehub._fetch.lockfile import LOCKFILE_NAME, LockedRepo, Lockfile
from safehub._policy.policy import Policy

__all__ = ["Pins", "find_lockfile", "url_basename"]


def url_basename(url: str) -> str:
    """The file name torch.hub gives a download: the last segment of the URL's path."""
    return os.path.basename(unquote(urlsplit(url).path))


def find_lockfile(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``safehub.lock`` in ``start`` (default: the working folder) or above."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / LOCKFILE_NAME
        if candidate.is_file():
            return candidate
    return None


@dataclass
class Pins:
    """Lookups of pinned digests for files and repositories."""

    lockfile: Lockfile | None = None
    policy: Policy | None = None
    _by_name: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lockfile is not None:
            for url in self.lockfile.files:
                self._by_name.setdefault(url_basename(url), []).append(url)

    @property
    def lockfile_path(self) -> str | None:
        return str(self.lockfile.path) if self.lockfile is not None else None

    def for_url(self, url: str) -> list[Expectation]:
        """Pins for a file downloaded from ``url`` (lockfile and policy)."""
        out: list[Expectation] = []
        if self.lockfile is not None:
            locked = self.lockfile.file(url)
            if locked is not None:
                out.append(Expectation("sha256", locked.sha256,
                                       f"lockfile {self.lockfile.path} [files.{url!r}]",
                                       "SH300", locked.size))
        out.extend(self._policy_pins([url, url_basename(url)]))
        return out

    def for_name(self, name: str) -> list[Expectation]:
        """Pins for a file known only by name: the lockfile's for URLs with that file name
        (any of them may match) and the policy's pins by file name."""
        out: list[Expectation] = []
        if self.lockfile is not None:
            urls = self._by_name.get(name, [])
            locked = [self.lockfile.files[url] for url in urls]
            if locked:
                sizes = {entry.size for entry in locked}
                where = (f"[files.{urls[0]!r}]" if len(urls) == 1
                         else f"({len(urls)} URLs named {name!r})")
                out.append(Expectation("sha256", locked[0].sha256,
                                       f"lockfile {self.lockfile.path} {where}", "SH300",
                                       locked[0].size if len(sizes) == 1 else None,
                                       tuple(entry.sha256 for entry in locked[1:])))
        out.extend(self._policy_pins([name]))
        return out

    def _policy_pins(self, keys: Iterable[str]) -> list[Expectation]:
        if self.policy is None:
            return []
        pins = self.policy.model.downloads.pins
        for key in keys:
            if key not in pins and "://" in key:
                key = _canonical_pin_key(pins, key)  # URLs are compared in canonical form
            if key in pins:
                return [Expectation("sha256", pins[key].lower(),
                                    f"policy {self.policy.name} downloads.pins.{key!r}",
                                    "SH300")]
        return []

    def urls_named(self, name: str) -> list[str]:
        """Lockfile URLs whose file name is ``name``."""
        return list(self._by_name.get(name, []))

    def repo(self, repo: str, commit: str) -> list[LockedRepo]:
        """Lockfile entries for ``repo`` locked to ``commit``."""
        if self.lockfile is None:
            return []
        key = repo.casefold()  # repository names are case-insensitive
        return [e for e in self.lockfile.repos.values()
                if e.repo.casefold() == key and e.commit == commit]


def _canonical_pin_key(pins: dict[str, str], url: str) -> str:
    """The ``downloads.pins`` key naming ``url`` once both are canonical, else ``url``."""
    from safehub._policy.urls import canonical_url
    from safehub.errors import InvalidIdentifier

    try:
        wanted = canonical_url(url)
    except InvalidIdentifier:
        return url
    for key in pins:
        try:
            if "://" in key and canonical_url(key) == wanted:
                return key
        except InvalidIdentifier:
            continue
    return url
