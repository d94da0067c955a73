"""The identity a hub call's warm sandboxed child is kept under (``Sandbox.run``'s ``reuse``).

Calls of one repository may share a warm child (policy ``[sandbox] reuse = "per-repo"``):
it imported hubconf.py once, under one policy, and whatever that import fetched or
computed stays in its memory, as in torch.hub's process. So a child is reused only by
a call that would have made exactly the same child:

- the same repository content: a GitHub checkout's commit and tree digest (verified by
  the fetch layer), or a local folder's digest over every file's path, size and SHA-256
  (computed for each call, so an edited folder gets a new child); a private verified
  copy (signatures, lockfile) is made for one call and never reused;
- the same policies (the effective settings of the call's policy and of every outer
  ``enforce()`` scope), the same fetcher settings (cache, hub folder, lockfile and its
  content, frozen, offline; a caller's own Fetcher object only with itself), the same
  requester and nested trust.

The sandbox adds the repository folder, limits, layers and bytecode folder to the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from safehub._tree import walk

if TYPE_CHECKING:
    from safehub._fetch.fetcher import Fetcher
    from safehub._policy.policy import Policy

__all__ = ["local_tree_identity", "reuse_identity"]

# A local folder larger than this is not digested on every call: its calls get fresh
# children.
_MAX_TREE_BYTES = 256 << 20
_MAX_TREE_FILES = 20_000

_fetcher_tokens: weakref.WeakKeyDictionary[Fetcher, str] = weakref.WeakKeyDictionary()


def local_tree_identity(root: Path) -> str | None:
    """A digest of a local folder's content (every file's relative path, size and SHA-256,
    each link's target; the top-level ``.git`` left out), or None when it cannot be
    had cheaply and surely (too large, special files, unreadable)."""
    lines: list[str] = []
    total = files = 0
    def unreadable(exc: OSError) -> None:
        # A folder that cannot be listed may still be read by name (mode 0o711): its
        # files would change unseen by the digest.
        raise exc

    try:
        for dirpath, dirnames, filenames in walk(root, onerror=unreadable):
            if dirpath == os.fspath(root):
                dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames + [d for d in dirnames
                                             if os.path.islink(os.path.join(dirpath, d))]:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                st = os.lstat(full)
                files += 1
                if files > _MAX_TREE_FILES:
                    return None
                if stat.S_ISLNK(st.st_mode):
                    lines.append(f"L {rel!r} {os.readlink(full)!r}")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    return None
                total += st.st_size
                if total > _MAX_TREE_BYTES:
                    return None
                h = hashlib.sha256()
                with open(full, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                lines.append(f"F {rel!r} {st.st_size} {h.hexdigest()}")
    except (OSError, UnicodeError):
        return None
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _policy_digest(policy: Policy) -> str:
    return hashlib.sha256(policy.model.model_dump_json(by_alias=True).encode()).hexdigest()


def _fetcher_identity(fetcher: Fetcher, supplied: bool) -> dict[str, object]:
    lockfile = fetcher.lockfile
    identity: dict[str, object] = {
        "hub_dir": str(fetcher.hub_dir), "cache_dir": str(fetcher.cache_dir),
        "torch_model_dir": str(fetcher.torch_model_dir), "frozen": fetcher.frozen,
        "offline": fetcher.offline, "api": fetcher.api_base,
        "lockfile": None if lockfile is None else [
            str(lockfile.path), hashlib.sha256(lockfile.to_toml().encode()).hexdigest()],
    }
    if supplied:  # its own settings (tokens, HTTP) are its own: only it shares its children
        token = _fetcher_tokens.get(fetcher)
        if token is None:
            token = _fetcher_tokens.setdefault(fetcher, secrets.token_hex(16))
        identity["object"] = token
    return identity


def reuse_identity(policy: Policy, fetcher: Fetcher, *, supplied_fetcher: bool,
                   content: str | None, requester: str | None,
                   trust_nested: Sequence[str]) -> str | None:
    """The ``reuse`` string for ``Sandbox.run``, or None for a fresh child: the policy
    (or an outer one) says ``per-call``, or the content has no identity."""
    policies = tuple({id(p): p for p in (policy, fetcher.policy, *fetcher.also)}.values())
    if content is None or any(p.model.sandbox.reuse != "per-repo" for p in policies):
        return None
    parts = {"content": content, "policies": [_policy_digest(p) for p in policies],
             "fetcher": _fetcher_identity(fetcher, supplied_fetcher), "requester": requester,
             "trust_nested": sorted(trust_nested)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
