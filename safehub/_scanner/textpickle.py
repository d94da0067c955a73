"""Text whose first bytes happen to be pickle opcodes: source code, YAML, prose.

``import os`` is protocol 0 INST (``i``), ``class``/``config:`` is GLOBAL (``c``), ``(``
is MARK, ``I``/``F``/``L``/``S``/``N`` push values. What the real loaders do with such
text decides (the oracle, tests/scanner/test_text_files.py, runs them):

- ``_pickle.c`` (torch.load, pickle.load, numpy.load) calls ``marker()`` before it reads
  INST's lines, so ``import os`` fails with "could not find MARK" having read nothing;
  GLOBAL reads its two lines and asks ``__import__`` for the first one.
- ``pickle._Unpickler`` (joblib.load) reads INST's lines and calls ``find_class`` before
  it looks for the MARK, so it asks ``__import__`` for ``mport os``.

``__import__`` first looks up the shortest prefix of the name that has no parent
(``a`` of ``a.b``; ``.a`` of ``.a.b``, found by its last part ``a``). When that part is
not a Python identifier (``mport os``, ``lass Foo:``, ``nclude "x``) no installed package
has that name, but folders and files on the import path can (``site-packages`` is a
folder inside the standard library's, importable as a namespace package): such names are
looked up on this interpreter's path with ``importlib.util.find_spec``, which runs no
module code. A name found nowhere fails, and the loader with it; a file of that literal
name planted elsewhere is the same trust as a ``numpy.py`` planted next to any
checkpoint, which no scan of the checkpoint decides.

So a file that is wholly text is not a pickle when every reading of it (the C reader
from a file and from bytes, the pure-Python reader) stops before completing a record,
looks up no name an installed module could answer, computes no name and reaches no
extension code. Text that completes a record, or looks up a name like ``os`` or
``antigravity`` in any reading, stays judged as a pickle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import BinaryIO

from safehub._scanner.nonmodel import is_text
from safehub._scanner.pickle_vm import Limits, OpBudget, PickleCursor, StreamResult
from safehub._scanner.source import FileRegion

__all__ = ["MAX_LOOKUPS", "any_import_can_run", "dead_text_names", "import_can_run"]


# Path searches one question "can any of these imports run?" may make. Each costs a
# find_spec (a fraction of a millisecond); a stream can name a million modules. Real text
# read as a pickle dies long before it names this many (past it, text is judged).
MAX_LOOKUPS = 1024


def any_import_can_run(modules: Iterable[str]) -> bool:
    """Whether ``import_can_run`` holds for any of ``modules``, each first part searched
    for once. Past ``MAX_LOOKUPS`` distinct names that need a search, the answer is yes
    (fail closed): a text of a million unfindable names once kept a scan busy for hours,
    one path search and one list scan per name."""
    searched: set[str] = set()
    for module in modules:
        first = _first_part(module)
        if first.isidentifier():
            return True
        if not first or "\0" in first or first in searched:
            continue
        if len(searched) >= MAX_LOOKUPS:
            return True
        searched.add(first)
        if _found_on_path(first):
            return True
    return False


def _first_part(module: str) -> str:
    return (module[1:] if module.startswith(".") else module).split(".", 1)[0]


def import_can_run(module: str) -> bool:
    """Whether ``__import__(module)`` can find a module (and so run code).

    The first lookup is for the part before the first dot (after a leading dot). A Python
    identifier is assumed importable (it may be installed where the file is loaded). Any
    other spelling is looked up on this interpreter's import path: folders on ``sys.path``
    are importable as namespace packages under names that are not identifiers
    (``site-packages``, ``lib-dynload``, ``*-stubs``), and so are files such as
    ``_sysconfigdata__linux_x86_64-linux-gnu.py``.
    """
    first = _first_part(module)
    if first.isidentifier():
        return True
    if not first or "\0" in first:
        return False  # __import__ refuses the name before any lookup
    return _found_on_path(first)


def _found_on_path(name: str) -> bool:
    import importlib.util

    try:
        # For a name without a dot this asks the finders only: no module code runs.
        return importlib.util.find_spec(name) is not None
    except Exception:  # a finder failing on a strange name: assume it can be found
        return True


def _dead(res: StreamResult) -> bool:
    return (not res.stopped and not res.limit and not res.computed and not res.extensions
            and not res.calls and not any_import_can_run(g.module for g in res.globals))


def dead_text_names(fh: BinaryIO, size: int, limits: Limits) -> list[str] | None:
    """For text on which every loader stops having loaded and imported nothing: the module
    names some reader would ask ``__import__`` for in vain (often none). None for
    anything else."""
    if size == 0 or not is_text(fh, size):
        return None
    names: list[str] = []
    # Its own budget: a long protocol 0 pickle read here is read again as a pickle, and
    # the file's budget is for that reading.
    limits = replace(limits, budget=OpBudget(limits.max_ops))
    for python in (False, True):
        # The C reading re-reads split frames as bytes itself (PickleCursor.stream).
        cursor = PickleCursor(FileRegion(fh, 0, size), limits=limits)
        cursor.py = python
        res = cursor.stream()
        if not _dead(res):
            return None
        names.extend(g.module for g in res.globals)
    return list(dict.fromkeys(names))
