"""Which policy applies: an argument, $SAFEHUB_POLICY, [tool.safehub], or the default.

Kept free of pydantic and the schema so that commands that only need to know
*whether* a policy was selected (``safehub scan``) stay fast.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from safehub.errors import PolicyError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BUILT_IN_DEFAULT", "ENV_VAR", "EXPLICIT", "PRESETS", "resolve_spec"]

PRESETS = ("strict", "default", "permissive")
ENV_VAR = "SAFEHUB_POLICY"
BUILT_IN_DEFAULT = "the built-in default"
EXPLICIT = "selected explicitly"


def resolve_spec(spec: str | os.PathLike[str] | None, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> tuple[str, str]:
    """Which policy to use and why: (name-or-path, how it was selected).

    Precedence: the explicit argument, then $SAFEHUB_POLICY, then ``policy`` in the
    nearest pyproject.toml's ``[tool.safehub]``, then the ``default`` preset. The two
    implicit sources may only tighten ``default`` (checked by ``load_policy``).
    """
    environ = os.environ if env is None else env
    if spec is not None:
        return os.fspath(spec), EXPLICIT
    if environ.get(ENV_VAR):
        return environ[ENV_VAR], f"selected by ${ENV_VAR}"
    found = _nearest_pyproject(os.getcwd() if cwd is None else os.fspath(cwd))
    if found is not None:
        try:
            with open(found, encoding="utf-8") as fh:
                text = fh.read()
            # Only a file that spells "safehub", or could in a quoted key (\u escapes), can
            # select a policy: the others are not parsed (tomllib costs start-up).
            data = _toml().loads(text) if _may_name_safehub(text) else {}
        except (OSError, _toml().TOMLDecodeError, UnicodeDecodeError) as exc:
            pyproject = _path(found)
            raise PolicyError(f"cannot read {pyproject}: {exc}", subject=str(pyproject),
                              fix="fix the file's TOML syntax") from exc
        section = data.get("tool", {}).get("safehub", {})
        if isinstance(section, dict) and "policy" in section:
            pyproject = _path(found)
            value = section["policy"]
            if not isinstance(value, str):
                raise PolicyError("[tool.safehub] policy must be a preset name or a path",
                                  subject=str(pyproject))
            if value not in PRESETS:
                value = str((pyproject.parent / value).resolve())
            return value, f"selected by [tool.safehub] in {pyproject}"
    return "default", BUILT_IN_DEFAULT


def _may_name_safehub(text: str) -> bool:
    """Whether a TOML document could have a key ``safehub``: spelled out, or in a quoted
    key through \\u/\\U escapes (TOML's only escapes that make letters)."""
    return "safehub" in text or "\\u" in text or "\\U" in text


def _path(name: str) -> Path:
    """A Path, imported only where a path is reported: pathlib costs `safehub scan`
    start-up, and most runs find no [tool.safehub] section."""
    from pathlib import Path

    return Path(name)


def _nearest_pyproject(start: str) -> str | None:
    """``start`` and its parents (as ``Path.parents`` lists them), the first with a
    pyproject.toml file."""
    directory = start
    while True:
        candidate = os.path.join(directory, "pyproject.toml")
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _toml() -> Any:
    """tomllib (tomli before 3.11), imported only when a pyproject.toml is found."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli  # type: ignore[import-not-found,unused-ignore]  # pragma: no cover

    return tomli  # pragma: no cover
