"""Harmless data classes: names real checkpoints carry that cannot reach code when loaded.

Default deny stays: these are not in the allowlist of what rebuilding tensors needs
(:mod:`safehub._scanner.allowlist`). A pickle importing one of them gets an informational
finding (SH175) that does not block under the default threshold, and blocks under a
policy whose ``scanner.block_severity`` is ``info`` (``strict``). The same names are
handed to torch's weights-only loader on safehub's own load paths
(:mod:`safehub._hub.safe_globals`), so what the scan lets through also loads.

Each entry says why constructing it with any arguments a pickle can build cannot run
code, do I/O or resolve further names. Every argument a pickle passes is either plain
data or an object built from another global, and every other global is judged on its
own. ``tests/scanner/test_harmless.py`` constructs each one with hostile arguments under
an audit hook, and keeps a golden copy of this table.

torch's weights-only unpickler fills only dict, OrderedDict and Counter (SETITEMS); when a
file's scan passed a defaultdict, safehub's in-process load paths let torch fill one whose
factory is a value type (:func:`safehub._hub.safe_globals.allow_filled_defaultdicts`), so
a filled ``defaultdict(int)`` loads where it scans clean.

``collections.defaultdict`` is harmless only as a plain value: its default factory is
called on every missing key, so it must be one of :data:`DEFAULTDICT_FACTORIES` (or
None), given as the only constructor argument, with no BUILD state (which could set
``default_factory`` afterwards).
"""

from __future__ import annotations

__all__ = ["DEFAULTDICT", "DEFAULTDICT_FACTORIES", "HARMLESS", "harmless_reason"]

DEFAULTDICT = "collections.defaultdict"

_DATETIME = ("C value type: the constructor only validates numbers (or the packed bytes of "
             "its own pickle) and stores them; no I/O, no callbacks")
_PATH = ("path value: construction only splits and joins strings; it never touches the "
         "file system (that happens only when a method such as open() is called)")
_BUILTIN = ("built-in value type: called on pickle-built data it converts or copies it, "
            "nothing more")


def _build() -> dict[str, str]:
    table: dict[str, str] = {
        "datetime.date": _DATETIME,
        "datetime.datetime": _DATETIME,
        "datetime.time": _DATETIME,
        "datetime.timedelta": _DATETIME,
        "datetime.timezone": _DATETIME + " (a fixed UTC offset and a name)",
        "argparse.Namespace": "attribute bag (fairseq and argparse configs): __init__ only "
        "sets its keyword arguments as attributes; BUILD fills its plain __dict__",
        DEFAULTDICT: "dict with a default factory; allowed only when the factory is one of "
        "the plain value types (int, float, str, list, dict, ...) or None",
        "joblib.numpy_pickle.NumpyArrayWrapper": "joblib's array record (every joblib.dump "
        "with an array): BUILD stores subclass, shape, order and dtype, and joblib then "
        "reads the raw array bytes; the subclass and dtype are globals judged on their own, "
        "and object arrays are scanned as the nested pickles joblib reads",
    }
    for name in ("int", "float", "str", "list", "dict", "tuple", "bool"):
        table[f"builtins.{name}"] = _BUILTIN
    # pathlib's classes moved to pathlib._local in Python 3.13; pickles name either module.
    for module in ("pathlib", "pathlib._local"):
        for cls in ("PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath",
                    "WindowsPath"):
            table[f"{module}.{cls}"] = _PATH
    return table


HARMLESS: dict[str, str] = _build()

# What a defaultdict's default_factory may be: types whose call with no arguments returns
# an empty or zero value.
DEFAULTDICT_FACTORIES = frozenset({
    "builtins.int", "builtins.float", "builtins.str", "builtins.list", "builtins.dict",
    "builtins.tuple", "builtins.bool", "builtins.set", "builtins.frozenset", "builtins.bytes",
    "builtins.complex", "collections.OrderedDict", "collections.Counter",
    DEFAULTDICT,
})


def harmless_reason(name: str) -> str | None:
    """Why ``name`` is a harmless data class, or None when it is not one."""
    return HARMLESS.get(name)
