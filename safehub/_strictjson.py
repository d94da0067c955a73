"""JSON parsing that refuses what parsers disagree on: duplicate keys and non-finite numbers.

A signed document (or a safetensors header) with two ``"digest"`` keys would mean one
thing to a reader that keeps the first and another to one that keeps the last; refusing
it closes that gap. Shared by the signature verifier and the safetensors checks.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["StrictJSONError", "loads"]


class StrictJSONError(ValueError):
    """The document is not JSON, or uses a construct we refuse."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicate key {key!r} (it appears twice)")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"non-standard number {name}")


def loads(data: bytes) -> Any:
    """Parse UTF-8 JSON strictly; raise :class:`StrictJSONError` on anything doubtful."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8: {exc}") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError as exc:
        raise StrictJSONError("nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and int() refusing a 5000-digit number
        raise StrictJSONError(str(exc)) from exc
