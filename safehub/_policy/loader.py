"""Finding, reading, validating and combining policy files.

A policy is a chain: a preset or file, and the files that ``extends`` it. Each file
is validated on its own (so errors name the file that has them), then merged over
its parent. A child may tighten anything (add pins, denied owners, signature rules,
required layers; lower limits); anything it allows that its parent did not (a
trusted owner, a repo, a URL prefix, an allowed global, a higher limit) needs the
key in ``loosen``, as decided by :mod:`safehub._policy.tighten` on the validated
effective values of both. Every effective value remembers the file that set it, so decisions can
say which file and key decided them.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safehub._policy.schema import PolicyModel
from safehub._policy.select import PRESETS
from safehub._policy.tighten import direction_of, loosened_by, loosenings
from safehub.errors import PolicyError, PolicyIssue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["PRESETS", "LoadedPolicy", "anchor_path", "find_preset", "load_chain", "locate_line"]

_MAX_CHAIN = 16

# Lists that a child extends rather than replaces.
_UNION_LISTS = {("trust", "owners"), ("trust", "denied_owners"), ("downloads", "allowed_urls"),
                ("scanner", "allowed_globals"), ("sandbox", "required_layers")}


@dataclass
class LoadedPolicy:
    """The effective model, the files it came from, and who set what."""

    model: PolicyModel
    chain: list[str]  # files (or preset names), root first
    provenance: dict[tuple[str, ...], str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # file -> its text, for line lookup

    def anchors(self) -> list[tuple[PolicyIssue, str, str]]:
        """Every key and certificate file the signature rules name:
        (where it is named, ``public_keys`` or ``certificate_chains``, resolved path)."""
        found = []
        for index, rule in enumerate(self.model.signatures):
            source = self.provenance.get(("signatures", str(index)), "")
            local = self.provenance.get(("signatures", str(index), "#local"), str(index))
            for kind in ("public_keys", "certificate_chains"):
                for number, path in enumerate(getattr(rule, kind)):
                    resolved = anchor_path(source, path)
                    line = locate_line(self.sources.get(source, ""), ("signatures", local, kind))
                    found.append((PolicyIssue(source or "built-in default",
                                              f"signatures[{local}].{kind}[{number}]", "",
                                              line), kind, resolved))
        return found

    def where(self, *key: str) -> str:
        """``file:line`` (or ``file``) of the value at ``key``, for explanations."""
        for cut in range(len(key), 0, -1):
            source = self.provenance.get(tuple(key[:cut]))
            if source is not None:
                in_file = tuple(key[:cut])
                if in_file[:1] == ("signatures",) and len(in_file) > 1:
                    local = self.provenance.get(("signatures", in_file[1], "#local"))
                    in_file = ("signatures", local or in_file[1], *in_file[2:])
                line = locate_line(self.sources.get(source, ""), in_file)
                return f"{source}:{line}" if line else source
        return "built-in default"


def anchor_path(source: str, path: str) -> str:
    """Key and certificate paths are relative to the policy file that names them."""
    if os.path.isabs(path) or not source or source.startswith("preset:"):
        return path
    return str(Path(source).parent / path)


def preset_dir() -> Path:
    """Where the shipped presets live: inside the wheel, or at the repo root in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "policies", here.parent / "policies"):
        if (candidate / "default.toml").is_file():
            return candidate
    raise PolicyError("the shipped policy presets are missing from this installation",
                      fix="reinstall safehub")


def find_preset(name: str) -> Path | None:
    return preset_dir() / f"{name}.toml" if name in PRESETS else None


def load_chain(spec: str) -> LoadedPolicy:
    """Load a preset name or a policy file path with everything it extends."""
    files = _collect(spec)
    provenance: dict[tuple[str, ...], str] = {}
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    effective = PolicyModel.model_validate({"schema": 1})
    issues: list[PolicyIssue] = []
    broken = False  # an earlier file could not be read into an effective policy at all
    for label, text, raw in files:
        sources[label] = text
        found, usable = _validate_alone(label, text, raw)
        issues.extend(found)
        if usable is None or broken:
            broken = True
            continue
        # The keys in error are left out, so the file's other problems (loosening included)
        # are still reported in this one pass.
        raw = usable
        is_root = not provenance
        _merge(merged, raw, label, provenance, ())
        try:
            child = PolicyModel.model_validate(merged)
        except ValidationError as exc:
            issues.extend(_issues(label, text, exc))
            continue
        if not is_root:  # the root of the chain has nothing to loosen
            issues.extend(_check_tightening(label, text, raw, effective, child))
        effective = child
    if issues:
        raise PolicyError(f"policy {spec!r} is invalid ({len(issues)} problems)",
                          subject=spec, fix="correct each key listed", issues=issues)
    return LoadedPolicy(model=effective, chain=[label for label, _, _ in files],
                        provenance=provenance, sources=sources)


def _collect(spec: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, text, raw dict) for the chain, root first; cycles and misses are errors."""
    chain: list[tuple[str, str, dict[str, Any]]] = []
    seen: list[str] = []
    current: str | None = spec
    base = Path.cwd()
    while current is not None:
        path = _spec_path(current, base)
        label = str(path) if current not in PRESETS else f"preset:{current}"
        key = str(path.resolve())
        if key in seen:
            cycle = " -> ".join([*seen, key])
            raise PolicyError("policy files extend each other in a cycle", subject=spec,
                              fix="remove one of the extends keys", issues=[
                                  PolicyIssue(label, "extends", f"cycle: {cycle}")])
        if len(seen) >= _MAX_CHAIN:
            raise PolicyError("policy extends chain is too long", subject=spec)
        seen.append(key)
        text = _read(path, label, current, chain)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line = _toml_error_line(str(exc))
            raise PolicyError(f"policy {label} is not valid TOML", subject=label,
                              fix="fix the TOML syntax", issues=[
                                  PolicyIssue(label, "", str(exc), line)]) from exc
        chain.append((label, text, raw))
        parent = raw.get("extends")
        if parent is not None and not isinstance(parent, str):
            raise PolicyError("extends must be a preset name or a path", subject=label,
                              issues=[PolicyIssue(label, "extends", "not a string",
                                                  locate_line(text, ("extends",)))])
        current = parent
        base = path.parent
    chain.reverse()
    return chain


# Far above any real policy; a FIFO that never ends cannot exhaust memory.
_MAX_POLICY_BYTES = 16 << 20


def _spec_path(spec: str, base: Path) -> Path:
    if not spec.strip():  # '' would name the working folder itself
        raise PolicyError("the policy name is empty", subject=repr(spec),
                          fix=f"use a preset ({', '.join(PRESETS)}) or the path of a policy "
                              f"file")
    preset = find_preset(spec)
    if preset is not None:
        return preset
    path = Path(spec).expanduser()
    return path if path.is_absolute() else base / path


def _read(path: Path, label: str, spec: str, chain: list[Any]) -> str:
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to must not hang (reads block again after,
        # so `--policy <(command)` works); devices (/dev/zero never ends) are refused.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            os.close(fd)
            raise OSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.ENODEV,
                          "it is a folder" if stat.S_ISDIR(mode) else "not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(_MAX_POLICY_BYTES).decode("utf-8")
    except FileNotFoundError:
        where = f" (extended by {chain[-1][0]})" if chain else ""
        known = ", ".join(PRESETS)
        raise PolicyError(f"policy {spec!r} not found{where}", subject=str(path),
                          fix=f"use a preset ({known}) or the path of a policy file") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PolicyError(f"policy {label} cannot be read: {why}", subject=str(path),
                          fix="check the file's permissions and encoding (UTF-8)") from exc


def _validate_alone(label: str, text: str, raw: dict[str, Any]
                    ) -> tuple[list[PolicyIssue], dict[str, Any] | None]:
    """The file's own problems, and the file without the keys in error (None when a
    problem is not tied to a key that can be left out)."""
    issues: list[PolicyIssue] = []
    current = copy.deepcopy(raw)
    for _ in range(_MAX_CLEANUPS):
        try:
            PolicyModel.model_validate(current)
        except ValidationError as exc:
            for issue in _issues(label, text, exc):
                if str(issue) not in {str(i) for i in issues}:
                    issues.append(issue)
            locs = sorted({tuple(err["loc"]) for err in exc.errors()},
                          key=lambda loc: [str(part) for part in loc], reverse=True)
            if not all(_drop(current, loc) for loc in locs):
                return issues, None
            continue
        return issues, current
    return issues, None


_MAX_CLEANUPS = 4


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Remove the value at ``loc`` (a pydantic error location, which may end in type
    tags that are not keys: the longest prefix that names a value is removed)."""
    if not loc or loc[0] == "schema":
        return False
    return any(_remove(data, loc[:cut]) for cut in range(len(loc), 0, -1))


def _remove(data: Any, loc: tuple[Any, ...]) -> bool:
    parent = data
    for part in loc[:-1]:
        if not _has(parent, part):
            return False
        parent = parent[part]
    if not _has(parent, loc[-1]):
        return False
    del parent[loc[-1]]
    return True


def _has(container: Any, part: Any) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _issues(label: str, text: str, exc: ValidationError) -> list[PolicyIssue]:
    out = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = _key_text(err["loc"])
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")
        out.append(PolicyIssue(label, key, message, locate_line(text, loc)))
    return out


def _key_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            part = "schema" if part == "schema_" else str(part)
            text += f".{part}" if text else part
    return text


def _merge(into: dict[str, Any], raw: dict[str, Any], label: str,
           provenance: dict[tuple[str, ...], str], prefix: tuple[str, ...]) -> None:
    for key, value in raw.items():
        path = (*prefix, key)
        if key in ("extends", "loosen") and not prefix:
            continue  # these describe the file itself, not the effective policy
        if path == ("downloads", "pins") and isinstance(value, dict):
            pins = into.setdefault("pins", {})
            for url, digest in value.items():
                pins[url] = digest
                pin_key = (*path, url)
                provenance[pin_key] = label
            provenance.setdefault(path, label)
        elif isinstance(value, dict):
            _merge(into.setdefault(key, {}), value, label, provenance, path)
            provenance.setdefault(path, label)
        elif path in _UNION_LISTS and isinstance(value, list):
            current = into.setdefault(key, [])
            for item in value:
                if item not in current:
                    current.append(item)
                    item_key = (*path, str(item))
                    provenance[item_key] = label
            provenance[path] = label
        elif path == ("signatures",) and isinstance(value, list):
            current = into.setdefault(key, [])
            for local, rule in enumerate(value):
                # The effective index, and where the rule sits in its own file ("#local").
                provenance[("signatures", str(len(current)))] = label
                provenance[("signatures", str(len(current)), "#local")] = str(local)
                current.append(rule)
        else:
            into[key] = value
            provenance[path] = label


def _check_tightening(label: str, text: str, raw: dict[str, Any], parent: PolicyModel,
                      child: PolicyModel) -> list[PolicyIssue]:
    """A child may loosen its parent only where its ``loosen`` list says so.

    Decided on the validated effective values of both (see :mod:`safehub._policy.tighten`).
    """
    loosen = raw.get("loosen", [])
    allowed = [entry for entry in loosen if isinstance(entry, str)]
    issues = [PolicyIssue(label, f"loosen[{i}]", f"{entry!r} names no policy key",
                          locate_line(text, ("loosen",)))
              for i, entry in enumerate(allowed) if _split_loosen(entry) not in _KNOWN_ROOTS]
    for item in loosenings(parent, child):
        if loosened_by(allowed, item.path):
            continue
        issues.append(PolicyIssue(
            label, item.dotted, f"{item.message}: looser than the policy it extends; list "
            f"{_loosen_spelling(item.path)} in `loosen` to allow it",
            locate_line(text, item.path)))
    return issues


def _loosen_spelling(path: tuple[str, ...]) -> str:
    """How to write ``path`` in ``loosen`` (parts with dots or slashes quoted)."""
    parts = [p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p) for p in path]
    return "'" + ".".join(parts) + "'"


def _split_loosen(entry: str) -> str:
    head = entry.strip().split(".", 1)[0]
    return head.strip("\"'")


_KNOWN_ROOTS = frozenset(field.alias or name for name, field in PolicyModel.model_fields.items()
                         if direction_of(field) != "meta")


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|"
                     r"[A-Za-z0-9_-]+))*)\s*=")
_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(next(g for g in m.groups() if g is not None) for m in _PART.finditer(text))


def locate_line(text: str, key: tuple[str, ...]) -> int | None:
    """Best-effort 1-based line of ``key`` (a path like ('repos', 'a/b', 'commit')) in TOML."""
    if not text or not key:
        return None
    key = tuple(str(k) for k in key)
    table: tuple[str, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            parts = _split_key(header.group(2))
            if header.group(1) == "[[":
                index = array_counts.get(parts, 0)
                array_counts[parts] = index + 1
                table = (*parts, str(index))
            else:
                table = parts
            if table == key[: len(table)] and len(table) == len(key):
                return number
            continue
        assign = _ASSIGN.match(line)
        if assign:
            full = (*table, *_split_key(assign.group(1)))
            if full == key[: len(full)] or key == full[: len(key)]:
                return number
    return None


def _toml_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None
