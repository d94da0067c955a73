"""What the parent prepares for the sandbox to read (the repository's bytecode, a private
copy of a local repository) is readable by others only when the caller is root."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehub._hub import runner
from safehub._sandbox import bytecode
from safehub._tree import remove_tree
from tests.forked import run_forked

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder in the system's temporary folder, whose parents (unlike pytest's, private
    to root) an unprivileged uid can pass through."""
    path = Path(tempfile.mkdtemp(prefix="safehub-test-"))
    yield path
    remove_tree(path)


def test_a_non_root_callers_bytecode_and_repository_copy_are_its_own(open_tmp: Path) -> None:
    # A non-root caller's sandbox keeps the caller's uid, so no other user needs to read
    # what the parent prepares; it was world-readable (0755 folders, 0444 files in /tmp),
    # showing a private repository's bytecode and copies to the machine's other users.
    # Run in a forked process as an unprivileged uid when the tests run as root.
    repo = open_tmp / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "hubconf.py").write_text("import pkg.model\n")
    # More source than the child is left to compile itself (bytecode._SMALL_SOURCE).
    (repo / "pkg" / "model.py").write_text("SIZE = 2\n" + "# padding\n" * 4000)
    copy = open_tmp / "private" / "repo"
    copy.parent.mkdir()
    (copy / "pkg").mkdir(parents=True)
    (copy / "hubconf.py").write_text("x = 1\n")
    (copy / "pkg" / "model.py").write_text("y = 2\n")
    temp = open_tmp / "tmp"
    temp.mkdir()
    uid = NOBODY if os.geteuid() == 0 else None
    if uid is not None:
        for folder, dirs, files in os.walk(open_tmp):
            for name in (folder, *(os.path.join(folder, n) for n in dirs + files)):
                os.chown(name, uid, uid)

    def work() -> bytes:
        if uid is not None:
            os.setgid(uid)
            os.setuid(uid)
        tempfile.tempdir = str(temp)
        bytecode._root, bytecode._done = None, {}  # this process's own bytecode folder
        prefix = Path(bytecode.compiled(str(repo)) or "")
        runner._read_only(copy)
        made = [prefix.parent, prefix, *prefix.rglob("*"), copy.parent, *copy.rglob("*")]
        return json.dumps({str(p): _mode(p) for p in made if not p.is_symlink()}).encode()

    modes = json.loads(run_forked(work))
    assert len(modes) >= 6, modes
    shared = {path: oct(mode) for path, mode in modes.items() if mode & 0o077}
    assert not shared, f"readable by other users: {shared}"
