"""Repository bytecode compiled once per folder, read-only to every child.

Each child imports the repository afresh (nothing of an earlier call survives),
and with bytecode writing off it compiled every module from source on every call.
The parent compiles the tree once, in a short ``python -I`` compileall
subprocess (compiling runs no repository code), into a private folder outside the
repository; the child reads it through Landlock's read-only rules and checks each
file against its source's size and mtime as Python always does (a changed source is
compiled in memory again). A failure or a slow tree (a FIFO named ``x.py``) only
means no cache: the call goes on without one. A folder's bytecode lives as long as
the folder: once it is gone (a call's private verified copy, a conversion's entry
folder) or replaced at its path, the next compile removes it.

The compile runs with the caller's rights, outside the sandbox: a module that is a
symbolic link to a file outside the repository (``helper.py -> ~/project/settings.py``)
is not compiled (compileall's ``limit_sl_dest``). Its bytecode, constants and all,
would otherwise sit in the folder the child may read, and the child's import would
take it (the cached size and mtime match the link's target) without ever opening the
source that Landlock denies it.

A repository with little Python source (a hubconf of a few functions) is not compiled:
the child compiles it in memory in less time than the compile subprocess takes to
start, and that subprocess's CPU came out of the call's own start (the zygote's and the
caller's imports) on a machine with few CPUs.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import threading
from typing import NamedTuple

from safehub._sandbox.sharing import folder_mode, read_only_file_mode
from safehub._tree import remove_tree, walk

__all__ = ["compile_in_background", "compiled"]

_TIMEOUT_S = 20.0
# Below this much Python source in the tree, the child compiles it (a few milliseconds).
_SMALL_SOURCE = 16 << 10
# The compile's address space. It runs outside every sandbox limit, and compiling costs
# up to ~400 bytes of memory per source byte (a 20 MB list literal took 8 GB and a
# minute; 4.5 GB within the timeout). A module over the limit is skipped (compileall
# goes on with the next file): the child compiles it in memory, under the call's limits.
_MEMORY = 1 << 30
# compileall over the repo, its bytecode under the prefix (32 folder levels; links
# leaving the repo skipped). The prefix is set after the imports: with ``-X
# pycache_prefix`` the interpreter looked for its own standard library's bytecode there
# too, found none, and compiled every module compileall imports from source (0.2 s of
# CPU, beside the zygote's start) and wrote them into the folder the child reads.
_COMPILE = ("import sys, compileall, resource; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({_MEMORY}, {_MEMORY})); "
            "sys.pycache_prefix = sys.argv[1]; "
            "compileall.compile_dir(sys.argv[2], maxlevels=32, quiet=1, "
            "limit_sl_dest=sys.argv[3])")
_lock = threading.Lock()
_root: str | None = None
_done: dict[str, _Compiled] = {}
_pending: dict[str, threading.Thread] = {}
_names = itertools.count()


class _Compiled(NamedTuple):
    prefix: str | None  # None: no cache (the child compiles in memory)
    folder: tuple[int, int, int] | None  # the repository folder's identity when compiled


def _private_root() -> str:
    global _root
    if _root is None:
        _root = tempfile.mkdtemp(prefix="safehub-pyc-")
        os.chmod(_root, folder_mode())  # the sandbox reads it (as another uid when root)
        atexit.register(remove_tree, _root)
    return _root


def compile_in_background(repo_dir: str) -> None:
    """Start compiling ``repo_dir`` now, so the compile overlaps the zygote's start and
    the caller's other work; :func:`compiled` then waits for it."""
    _begin(repo_dir)


def compiled(repo_dir: str) -> str | None:
    """The pycache prefix holding ``repo_dir``'s bytecode (compiled on first use)."""
    thread, prefix = _begin(repo_dir)
    if thread is None:
        return prefix
    thread.join()
    with _lock:
        done = _done.get(repo_dir)
        return None if done is None else done.prefix


def _identity(folder: str) -> tuple[int, int, int] | None:
    # The inode alone is no identity: a folder removed and made again at its path often
    # gets the same number back. Its change time moves with every entry added or removed.
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def _begin(repo_dir: str) -> tuple[threading.Thread | None, str | None]:
    """The compile of ``repo_dir`` under way (its thread), or done (None, its prefix).

    _lock guards the bookkeeping only: the compile itself runs outside it, so a second
    caller (the API's early start, then the runner's) never waits for a subprocess it
    did not ask to wait for; the bytecode of folders that are gone is removed outside it
    too."""
    with _lock:
        stale = _forget_gone()
        thread = _start(repo_dir)
        prefix = _done[repo_dir].prefix if thread is None else None
    for gone in stale:  # a large tree takes a while
        remove_tree(gone)
    return thread, prefix


def _start(repo_dir: str) -> threading.Thread | None:
    # Under _lock.
    if repo_dir in _done:
        return None
    thread = _pending.get(repo_dir)
    if thread is None:
        prefix = os.path.join(_private_root(), str(next(_names)))
        thread = threading.Thread(target=_compile, args=(repo_dir, prefix), daemon=True,
                                  name="safehub-compile")
        _pending[repo_dir] = thread
        thread.start()
    return thread


def _forget_gone() -> list[str]:
    """Under _lock: forget the bytecode of each folder that no longer exists or was
    replaced by another folder at its path (compiled again when asked for); returns the
    prefixes to remove. Each call of a verified private copy (a fresh temporary folder)
    and each conversion left a whole compiled copy here until the process ended, a
    repository's worth of disk per call."""
    gone = [repo for repo, done in _done.items()
            if done.folder is None or _identity(repo) != done.folder]
    return [prefix for prefix in (_done.pop(repo).prefix for repo in gone)
            if prefix is not None]


def _little_source(repo_dir: str) -> bool:
    """Whether the tree's ``.py`` files (as compileall finds them) hold at most
    _SMALL_SOURCE bytes; stops counting past it, or past 4096 entries (a large tree is
    left to the compile and its timeout)."""
    total = entries = 0
    for folder, dirs, files in walk(repo_dir):
        entries += len(dirs) + len(files)
        if entries > 4096:
            return False
        for name in files:
            if name.endswith(".py"):
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue
                if total > _SMALL_SOURCE:
                    return False
    return True


def _compile(repo_dir: str, prefix: str) -> None:
    result: str | None = None  # no cache, not an error: the child compiles in memory
    identity = _identity(repo_dir)
    try:
        if _little_source(repo_dir):
            return
        os.mkdir(prefix, folder_mode())
        # Whatever was compiled before a failure or the timeout is used; the rest
        # compiles in the child. Links leaving the repo are skipped (-e): only what the
        # child could read itself is compiled for it.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([sys.executable, "-I", "-c", _COMPILE, prefix, repo_dir,
                            os.path.realpath(repo_dir)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=_TIMEOUT_S, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        for folder, dirs, files in os.walk(prefix):
            for name in dirs:
                os.chmod(os.path.join(folder, name), folder_mode())
            for name in files:
                os.chmod(os.path.join(folder, name), read_only_file_mode())
        result = prefix
    except OSError:
        pass
    finally:
        with _lock:
            _pending.pop(repo_dir, None)
            _done[repo_dir] = _Compiled(result, identity)
