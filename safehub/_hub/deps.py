"""Which installed packages a repository's hubconf declares, for a warm zygote.

torch.hub repos name what they need in ``hubconf.py``'s ``dependencies`` list
(``["torch", "torchvision"]``). Importing those once in the zygote, before any
fork, saves every call the seconds a fresh child spends importing them. Only
packages installed in this environment's site-packages qualify: never a module of
the repository itself (the list is read with ``ast``, nothing of the repo runs in
this process), and never a name the repository also ships at its top level as a
module the import system finds (source, sourceless bytecode, extension module or
folder: there torch.hub imports the repo's copy, so the child must too) -- unless the calling
process already imported the installed package: torch.hub then finds it in
``sys.modules`` and never imports the repo's copy (``import torchvision`` before
``torch.hub.load("pytorch/vision", ...)``, whose unbuilt ``torchvision/`` cannot be
imported), so the zygote preloads the installed one for the child too. Those are
imported whether declared or not; they are installed code the caller already ran.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.machinery
import importlib.util
import os
import site
import stat
import sys
import sysconfig
from pathlib import Path

__all__ = ["preloadable_dependencies"]

# The hubconf is parsed here, in the caller's process, outside every sandbox limit, and a
# parse costs up to ~500 bytes of memory and ~3 us of CPU per source byte (``x=[0,0,...]``:
# 4 MiB took 16 s and 2 GB, before the child was even started). Real hubconfs are a few
# KiB; a larger one only preloads nothing (its child imports its packages itself).
_MAX_HUBCONF = 64 << 10
_ALREADY = frozenset({"torch"})  # the zygote imports it anyway


def _site_dirs() -> list[str]:
    dirs = set()
    for key in ("purelib", "platlib"):
        with_key = sysconfig.get_paths().get(key)
        if with_key:
            dirs.add(os.path.realpath(with_key))
    with contextlib.suppress(AttributeError):  # embedded interpreters may lack it
        dirs.update(os.path.realpath(d) for d in site.getsitepackages())
    return sorted(dirs)


def _hubconf_source(hubconf: Path) -> bytes | None:
    """The file's bytes when it is a regular file of at most ``_MAX_HUBCONF`` bytes, read
    from the descriptor that was checked (a file in ``/proc`` says size 0 and holds more;
    a FIFO would block the open and the read); None otherwise."""
    try:
        fd = os.open(hubconf, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = _MAX_HUBCONF + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return None if len(data) > _MAX_HUBCONF else data


def _declared(hubconf: Path) -> list[str]:
    source = _hubconf_source(hubconf)
    if source is None:
        return []  # nothing preloaded: the child imports what the hubconf needs itself
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []  # the sandbox reports the real problem when it imports the file
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "dependencies" for t in node.targets) \
                and isinstance(node.value, (ast.List, ast.Tuple)):
            names = [e.value for e in node.value.elts
                     if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return names


def _installed(spec: importlib.machinery.ModuleSpec | None, sites: list[str]) -> bool:
    if spec is None:
        return False
    where = spec.origin if spec.origin not in (None, "namespace") else next(
        iter(spec.submodule_search_locations or []), None)
    if where is None:
        return False
    real = os.path.realpath(where)
    return any(real.startswith(d + os.sep) for d in sites)


# Every file name the import system's path finder takes as a top-level module, in its
# order: extension modules (``name.cpython-311-x86_64-linux-gnu.so``, ``name.abi3.so``,
# ``name.so``), source (``name.py``) and sourceless bytecode (``name.pyc``). A repository
# shipping ``yaml.pyc`` has torch.hub import that file, not the installed yaml.
_MODULE_SUFFIXES = tuple(importlib.machinery.all_suffixes())


def _shipped(repo_dir: Path, name: str, entries: frozenset[str]) -> bool:
    # ``entries`` (the folder's listing) answers most names without a stat: this runs
    # for every top-level module the process imported, twice per call. Exact names, as
    # the import system's own finder matches them on Linux. Counting a name too many is
    # harmless: a declared one is left to the child's own import, and one the caller
    # imported is preloaded, as torch.hub takes it from sys.modules either way.
    if any(name + suffix in entries for suffix in _MODULE_SUFFIXES):
        return True
    return name in entries and (repo_dir / name).is_dir()


def _entries(repo_dir: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(repo_dir))
    except OSError:
        return frozenset()


def preloadable_dependencies(repo_dir: Path) -> tuple[str, ...]:
    """The declared dependencies of ``repo_dir/hubconf.py`` that are top-level packages
    installed in site-packages and not shadowed by the repo, plus the repo's top-level
    names this process already imported from site-packages, sorted (the zygote key)."""
    sites = _site_dirs()
    entries = _entries(repo_dir)
    out = set()
    for name in _declared(repo_dir / "hubconf.py"):
        if not name.isidentifier() or name in _ALREADY:
            continue
        if _shipped(repo_dir, name, entries):
            continue  # the repo ships its own: torch.hub would import that one
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if _installed(spec, sites):
            out.add(name)
    for name, module in list(sys.modules.items()):
        # torch.hub finds these in sys.modules before it looks at the repo's copy.
        if "." in name or name in _ALREADY or not name.isidentifier() or \
                not _shipped(repo_dir, name, entries):
            continue
        if _installed(getattr(module, "__spec__", None), sites):
            out.add(name)
    return tuple(sorted(out))
