"""No ``assert`` in safehub's code: ``python -O`` removes them, and with them any check.

Invariants raise :class:`safehub.errors.InternalError` instead (fail closed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import safehub

PACKAGE = Path(safehub.__file__).resolve().parent


def test_no_assert_statements_in_the_package() -> None:
    found = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50, "the package was not found where expected"
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                  for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert found == [], "replace these asserts with raises: " + ", ".join(found)


def test_internal_error_is_a_safehub_error_with_a_fix() -> None:
    from safehub.errors import InternalError, SafehubError

    err = InternalError("x went missing", subject="thing")
    assert isinstance(err, SafehubError)
    assert "internal error: x went missing" in err.diagnostics()
    assert "report this as a safehub bug" in err.diagnostics()
