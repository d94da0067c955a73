"""torch.hub's directory: repository folders, ``checkpoints/`` and ``trusted_list``.

torch.hub keeps no record of what it downloaded. What can be known:

- ``<owner>_<name>_<ref>/`` is a checkout of ``owner/name`` at ``ref`` (``/`` in the ref
  became ``_``). GitHub owners never contain ``_``, so the owner is certain; where the
  name ends and the ref begins is taken from ``trusted_list`` or the policy's
  ``[repos]`` when they know the repo, else at the last ``_``.
- ``checkpoints/<name>`` was downloaded by ``load_state_dict_from_url``; a name of the
  form ``<stem>-<hex>.<ext>`` carries a SHA-256 prefix (torch's ``check_hash``), and a
  ``safehub.lock`` or policy pin for a URL with that file name applies to it.
- ``trusted_list`` names the repos whose code torch.hub runs without asking.

safehub's own cache (``<hub>/safehub``) is audited by :mod:`safehub._audit.safehub_layout`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from safehub._audit.context import Context
from safehub._audit.model import Discovery, Expectation, FileTarget, Provenance, RepoTarget
from safehub._audit.plain import plain_file_targets
from safehub._audit.safehub_layout import discover_safehub_cache, is_safehub_cache
from safehub._fetch.location import SAFEHUB_SUBDIR
from safehub._fetch.torch_cache import imported_from
from safehub._policy.decide import RepoRequest
from safehub._policy.schema import SHA1_RE
from safehub.findings import Skipped
from safehub.rules import Severity

__all__ = ["discover_torch_hub", "hash_prefix", "is_torch_hub_dir", "parse_repo_folder"]

# torch.hub's HASH_REGEX is r"-([a-f0-9]*)\." and takes any length. Names such as
# "vit-224.pth" or "ckpt-20240101.pt" would then "carry" a prefix and fail as tampered;
# only 8+ hex digits with at least one letter are read as a digest.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$")


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix in a torch checkpoint name (``resnet18-f37072fd.pth``)."""
    match = _HASH_IN_NAME.search(name)
    if match is None or not re.search(r"[a-f]", match.group(1)):
        return None
    return match.group(1)


def _trusted_list(root: str) -> list[str]:
    try:
        with open(os.path.join(root, "trusted_list"), encoding="utf-8") as fh:
            return [line.strip() for line in fh.read(1 << 20).splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


def parse_repo_folder(folder: str, known: set[str]) -> tuple[str, str] | None:
    """``(owner/name, ref)`` for a torch.hub folder name, or None if it is not one.

    ``known`` holds ``owner_name`` spellings of repos known to exist (trusted_list,
    policy); the longest that prefixes the folder name wins.
    """
    owner, sep, rest = folder.partition("_")
    if not sep or not _OWNER.match(owner) or "_" not in rest:
        return None
    candidates = sorted((k for k in known if folder.startswith(k + "_") and
                         k.startswith(owner + "_")), key=len, reverse=True)
    if candidates:
        name = candidates[0][len(owner) + 1:]
        ref = folder[len(candidates[0]) + 1:]
    else:
        name, _, ref = rest.rpartition("_")
    if not name or not ref:
        return None
    return f"{owner}/{name}", ref


def is_torch_hub_dir(root: str, *, by_checkouts: bool = True) -> bool:
    """Whether a folder looks like torch's hub directory: a ``trusted_list``, safehub's
    cache, an ``<owner>_<repo>_<ref>/hubconf.py`` checkout (only with ``by_checkouts``:
    any folder of projects can hold one, so it is not evidence for a folder far above
    the path being audited), or a ``checkpoints/`` folder that is torch's (the folder is
    named ``hub``, as ``get_dir`` names it, or a file in it carries torch's
    ``-<sha256 prefix>.`` download name)."""
    if os.path.isfile(os.path.join(root, "trusted_list")):
        return True
    if is_safehub_cache(os.path.join(root, SAFEHUB_SUBDIR)):
        return True
    try:
        names = os.listdir(root)
    except OSError:
        return False
    if by_checkouts and any(parse_repo_folder(n, set()) is not None and
           os.path.isfile(os.path.join(root, n, "hubconf.py")) for n in names):
        return True
    checkpoints = os.path.join(root, "checkpoints")
    if "checkpoints" not in names or os.path.islink(checkpoints) or \
            not os.path.isdir(checkpoints):
        return False
    if os.path.basename(os.path.normpath(root)) == "hub":
        return True
    try:
        with os.scandir(checkpoints) as it:
            return any(hash_prefix(e.name) is not None for e in it)
    except OSError:
        return False


def discover_torch_hub(root: str, ctx: Context) -> Discovery:
    """Targets in torch's hub directory ``root``."""
    found = Discovery(caches=[("torch-hub", root)])
    trusted = _trusted_list(root)
    known = set(trusted) | {key.replace("/", "_") for key in ctx.policy.model.repos
                            if not key.endswith("/*")}
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        found.skipped.append(Skipped(root, f"cannot be listed: {exc.strerror}"))
        return found
    for name in names:
        full = os.path.join(root, name)
        if os.path.islink(full):
            found.skipped.append(Skipped(full, "symbolic link (not followed)"))
        elif name == SAFEHUB_SUBDIR and os.path.isdir(full):
            found.extend(discover_safehub_cache(full, ctx))
        elif name == "checkpoints" and os.path.isdir(full):
            found.extend(_checkpoints(full, ctx))
        elif name == "trusted_list" and os.path.isfile(full):
            found.repos.append(_trusted_list_target(full, trusted, ctx))
        elif os.path.isdir(full):
            parsed = parse_repo_folder(name, known)
            if parsed is not None and os.path.isfile(os.path.join(full, "hubconf.py")):
                found.extend(_repo_folder(full, parsed[0], parsed[1], ctx))
            else:
                found.extend(plain_file_targets(full, Provenance("torch-hub")))
        else:
            found.extend(plain_file_targets(full, Provenance("torch-hub")))
    return found


def _checkpoints(folder: str, ctx: Context) -> Discovery:
    found = Discovery()
    plain = plain_file_targets(folder, Provenance("torch-hub"))
    found.skipped.extend(plain.skipped)
    # Files safehub imported from here (verified then) must still have the full digest.
    imported = imported_from(Path(os.path.dirname(os.path.abspath(folder))) / SAFEHUB_SUBDIR)
    for target in plain.files:
        name = os.path.basename(target.path)
        expectations: list[Expectation] = list(target.expectations)  # a --fix record
        got = imported.get(os.path.realpath(target.path))
        if got is not None:
            expectations.append(Expectation(
                "sha256", got[0], f"safehub's import record {got[2]}", "SH400", got[1]))
        prefix = hash_prefix(name)
        if prefix is not None:
            expectations.append(Expectation(
                "sha256", prefix, "the SHA-256 prefix in its name (torch.hub's check_hash)",
                "SH400"))
        expectations.extend(ctx.pins.for_name(name))
        urls = ctx.pins.urls_named(name)
        url = urls[0] if len(urls) == 1 else None
        findings = list(target.findings)
        if not any(e.full for e in expectations):
            known = f"only the {len(prefix)}-hex SHA-256 prefix in its name" if prefix else \
                "nothing"
            findings.append(ctx.finding(
                "SH401", f"torch.hub recorded no digest for this download ({known} is known); "
                "pin it in safehub.lock to detect changes", target.path,
                severity=Severity.LOW if ctx.digests_required else Severity.INFO))
        found.files.append(FileTarget(
            path=target.path, real=target.real,
            provenance=Provenance("torch-hub", url=url),
            expectations=tuple(expectations), model_only=True, url=url, name=name,
            findings=tuple(findings)))
    return found


def _repo_folder(folder: str, repo: str, ref: str, ctx: Context) -> Discovery:
    revision = ref if SHA1_RE.match(ref) else None
    provenance = Provenance("torch-hub", repo=repo, ref=ref, revision=revision)
    found = plain_file_targets(folder, provenance, repo=repo, repo_root=folder)
    sig = os.path.join(folder, "model.sig")
    found.repos.append(RepoTarget(
        path=folder, provenance=provenance, kind="torch-hub checkout",
        signature=sig,
        findings=(ctx.finding(
            "SH401", "torch.hub recorded no digests for this checkout: changes since it was "
            "downloaded cannot be detected", folder, subject=repo,
            severity=Severity.LOW if ctx.digests_required else Severity.INFO),)))
    return found


def _trusted_list_target(path: str, entries: list[str], ctx: Context) -> RepoTarget:
    findings = []
    for entry in entries:
        owner, sep, name = entry.partition("_")
        if not sep or not name:
            continue
        # hub_dir: a policy that reads torch's trusted_list trusts these entries.
        decision = ctx.policy.decide(RepoRequest(f"{owner}/{name}",
                                                 hub_dir=os.path.dirname(path)))
        if decision.allowed:
            continue
        why = next((s.message for s in decision.trail if s.outcome == "deny"), "denied")
        findings.append(ctx.finding(
            "SH201", f"torch.hub runs {owner}/{name}'s code without asking (it is in "
            f"trusted_list), but policy {ctx.policy.name!r} does not trust it: {why}", path,
            subject=f"{owner}/{name}", severity=Severity.MEDIUM))
    return RepoTarget(path=path, provenance=Provenance("torch-hub"), kind="trusted-list",
                      findings=tuple(findings))
