"""Is one effective policy at least as strict as another? One generic comparison.

Both sides are validated, typed effective policies (after ``extends`` and pydantic's
strict validation), never raw TOML: ``"false"`` cannot pass for ``false``, and what is
compared is exactly what decides. Each schema field says which way it tightens
(``x-stricter`` in :mod:`safehub._policy.schema`); a field without one is compared as
``fixed`` (any change loosens), so a new setting can never loosen unnoticed.

Repository rules are compared through the decision they produce: for every
repository name a rule of either policy could govern, the governing rule (exact key
over ``owner/*`` over ``*/name`` over ``*/*``, as
:func:`safehub._policy.decide.repo_rule` picks it) and whether
the repo is allowed at all are compared field by field. So a child's
``[repos."evilcorp/malware"]`` under a parent's denying ``evilcorp/*`` loosens
``repos."evilcorp/malware"``, and needs ``loosen``.

Used by the loader (a child against the policy it extends, honouring its ``loosen``
list) and by implicit policy selection (a policy found in the environment or a
``pyproject.toml`` against the built-in default, with no ``loosen`` at all).
"""

from __future__ import annotations

import typing
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from safehub._policy.schema import STRICTER, PolicyModel, RepoRule
from safehub._policy.urls import url_matches_prefix

__all__ = ["Loosening", "direction_of", "loosened_by", "loosenings"]

_PROBE = "safehub-unlisted-probe"


@dataclass(frozen=True)
class Loosening:
    """One way the child allows more than the parent: the key path and how."""

    path: tuple[str, ...]
    message: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def direction_of(info: FieldInfo) -> str:
    """The field's ``x-stricter`` direction; ``fixed`` (fail closed) when it has none."""
    extra = info.json_schema_extra
    value = extra.get(STRICTER) if isinstance(extra, dict) else None
    return value if isinstance(value, str) else "fixed"


def loosened_by(loosen: Collection[str], path: tuple[str, ...]) -> bool:
    """Whether a ``loosen`` entry names ``path`` or a key above it.

    Entries are dotted (``sandbox.timeout_s``); keys that hold dots or slashes may be
    quoted as in TOML (``repos."acme/model.v2"``). A match is on whole key parts.
    """
    for entry in loosen:
        parts = _split(entry)
        if parts and tuple(path[:len(parts)]) == parts:
            return True
        # An unquoted entry naming a key that holds dots: compare the spelled-out form.
        if any(".".join(path[:cut]) == entry for cut in range(1, len(path) + 1)):
            return True
    return False


def _split(entry: str) -> tuple[str, ...]:
    parts: list[str] = []
    current = ""
    quote = ""
    for ch in entry.strip():
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if quote:
        return ()
    parts.append(current.strip())
    return tuple(parts)


def loosenings(parent: PolicyModel, child: PolicyModel) -> list[Loosening]:
    """Every way ``child`` allows more than ``parent`` (empty when it is as strict)."""
    out: list[Loosening] = []
    _compare_model(parent, child, (), out)
    _compare_repos(parent, child, out)
    return out


def _compare_model(old: BaseModel, new: BaseModel, prefix: tuple[str, ...],
                   out: list[Loosening]) -> None:
    for name, info in type(old).model_fields.items():
        path = (*prefix, info.alias or name)
        direction = direction_of(info)
        if direction in ("meta", "repos"):
            continue  # repos: compared through decisions, below
        a, b = getattr(old, name), getattr(new, name)
        if direction == "section" and isinstance(a, BaseModel) and isinstance(b, BaseModel):
            _compare_model(a, b, path, out)
            continue
        message = _looser(direction, info, path, a, b)
        if message:
            out.append(Loosening(path, message))


def _looser(direction: str, info: FieldInfo, path: tuple[str, ...], old: Any,
            new: Any) -> str | None:
    """How ``new`` is looser than ``old`` along ``direction``, or None."""
    if old == new:
        return None
    if direction in ("true", "false"):
        strict = direction == "true"
        return f"changes {old!r} to {new!r}" if old is strict and new is not strict else None
    if direction == "lower":
        return f"raises {old!r} to {new!r}" if new > old else None
    if direction == "higher":
        return f"lowers {old!r} to {new!r}" if new < old else None
    if direction == "order":
        order = _literal_values(info)
        if old in order and new in order and order.index(new) <= order.index(old):
            return None
        return f"changes {old!r} to the less strict {new!r}"
    if direction == "subset":
        if new is None:
            return f"allows anything where only {old!r} was allowed"
        if old is None:
            return None
        added = [v for v in new if not _covered(path, v, old)]
        return f"allows {', '.join(map(repr, added))} in addition" if added else None
    if direction == "superset":
        dropped = [v for v in old if v not in new]
        return f"no longer includes {', '.join(map(repr, dropped))}" if dropped else None
    if direction == "pins":
        changed = [k for k, v in old.items() if new.get(k) != v]
        return (f"drops or changes the pins for {', '.join(map(repr, changed))}"
                if changed else None)
    if direction == "rules":
        dropped = [i for i, rule in enumerate(old) if rule not in new]
        return f"drops or changes rules {dropped}" if dropped else None
    if old is None:
        return None  # "fixed": setting what was unset tightens
    return f"changes {old!r} to {new!r}"


def _literal_values(info: FieldInfo) -> list[Any]:
    return list(typing.get_args(info.annotation))


def _covered(path: tuple[str, ...], value: Any, allowed: list[Any]) -> bool:
    """Whether ``value`` is already allowed by ``allowed`` (URL prefixes cover their paths,
    ``module.*`` the names defined in that module)."""
    if value in allowed:
        return True
    if path[-1:] == ("allowed_urls",):
        return isinstance(value, str) and any(url_matches_prefix(value, prefix)
                                              for prefix in allowed)
    if path[-1:] == ("allowed_globals",) and isinstance(value, str) and \
            not value.endswith(".*"):
        from safehub._scanner.allowlist import matches  # the scanner's own matcher

        return any(matches(pattern, value) for pattern in allowed)
    return False


# --- repositories -----------------------------------------------------------------------


def _probes(keys: Collection[str]) -> set[str]:
    """Repository names that exercise every key (the key itself, or a name under a
    pattern) and every overlap of two keys (``acme/*`` with ``*/net``: ``acme/net``)."""
    parts = [key.partition("/")[::2] for key in keys]
    names = {f"{_PROBE if o == '*' else o}/{_PROBE if n == '*' else n}" for o, n in parts}
    names |= {f"{o}/{n}" for o, _ in parts for _, n in parts if "*" not in (o, n)}
    return names


def _governing(model: PolicyModel, repo: str) -> tuple[str | None, RepoRule | None]:
    """(rule key, rule) for ``repo`` as the decision finds it."""
    # The decision's own matcher, so this comparison follows however it matches names.
    from safehub._policy.decide import repo_rule
    from safehub._policy.loader import LoadedPolicy

    found = repo_rule(LoadedPolicy(model=model, chain=["<compared>"]), repo)
    return found if found is not None else (None, None)


def _allowed(model: PolicyModel, repo: str, rule: RepoRule | None, trust_repo: bool) -> bool:
    """Whether ``repo`` can be allowed at all (before pins and entrypoints), with or
    without the caller's ``trust_repo=True``."""
    owner = repo.split("/", 1)[0].casefold()
    if owner in {o.casefold() for o in model.trust.denied_owners}:
        return False
    if rule is not None:
        return rule.allow
    return (owner in {o.casefold() for o in model.trust.owners}
            or (trust_repo and model.trust.honor_trust_repo)
            or model.trust.read_torch_trusted_list  # any repo the trusted_list names
            or model.trust.unknown_repos == "sandbox")


def _compare_repos(parent: PolicyModel, child: PolicyModel, out: list[Loosening]) -> None:
    seen: set[tuple[str, ...]] = set()
    for repo in sorted(_probes([*parent.repos, *child.repos])):
        _, old_rule = _governing(parent, repo)
        new_key, new_rule = _governing(child, repo)
        where = ("repos", new_key) if new_key is not None else ("repos",)
        shown = new_key or repo
        modes = (False, True)  # without, and with, the caller's trust_repo=True
        if any(_allowed(child, repo, new_rule, m) and not _allowed(parent, repo, old_rule, m)
               for m in modes):
            if where not in seen:
                seen.add(where)
                out.append(Loosening(where, f"allows repo {shown!r}, which was denied"))
            continue
        if not any(_allowed(child, repo, new_rule, m) for m in modes):
            continue  # nothing the child allows here
        found: list[Loosening] = []
        _compare_model(old_rule or RepoRule(), new_rule or RepoRule(), where, found)
        for item in found:
            if item.path not in seen:
                seen.add(item.path)
                out.append(Loosening(item.path, f"{item.message} for {shown!r}"))
