"""The repository bytecode the parent compiles for the sandbox: what the folder holds and
who waits for the compile."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from safehub._sandbox import bytecode


def _repo(root: Path, *, source_kib: int = 32) -> Path:
    """A repository holding ``source_kib`` KiB of Python source (more than the child is
    left to compile by default)."""
    repo = root / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "hubconf.py").write_text("import pkg.model\n")
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "model.py").write_text("SIZE = 2\n" + "# padding\n" * (source_kib * 100))
    return repo


def test_little_source_is_left_to_the_child(tmp_path: Path) -> None:
    # The compile subprocess costs more CPU than compiling a few functions in the child,
    # and that CPU came out of the call's own start.
    assert bytecode.compiled(str(_repo(tmp_path / "small", source_kib=4))) is None
    assert bytecode.compiled(str(_repo(tmp_path / "large", source_kib=32))) is not None


def test_the_folder_holds_the_repositorys_bytecode_and_nothing_else(tmp_path: Path) -> None:
    # The folder is mounted read-only into every child. The interpreter that compiled
    # the repo used it as its own pycache prefix, so it also held the bytecode of every
    # standard-library module compileall imports (compiled from source each time: 0.2 s
    # of CPU on a call's critical path).
    repo = _repo(tmp_path)
    prefix = Path(bytecode.compiled(str(repo)) or "")
    assert prefix.is_dir()
    found = sorted(p for p in prefix.rglob("*") if p.is_file())
    expected = []
    for source in sorted(repo.rglob("*.py")):
        cached = Path(importlib.util.cache_from_source(str(source)))  # no prefix here
        expected.append(prefix / str(source.parent).lstrip(os.sep) / cached.name)
    assert found == sorted(expected)
    magic = importlib.util.MAGIC_NUMBER
    assert all(p.read_bytes()[:4] == magic for p in found)


def test_a_second_start_does_not_wait_for_the_compile(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The API starts the compile early and the runner asks again; the second request
    # waited on the compile's subprocess (the bookkeeping lock was held across it), which
    # kept the caller from its other work for the whole compile.
    repo = _repo(tmp_path)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    monkeypatch.setattr(bytecode, "_COMPILE", f"open({str(gate)!r}).read(); "
                        + bytecode._COMPILE)
    monkeypatch.setattr(bytecode, "_TIMEOUT_S", 600.0)  # blocked until released below
    bytecode.compile_in_background(str(repo))
    second = threading.Thread(target=bytecode.compile_in_background, args=(str(repo),),
                              daemon=True)
    second.start()
    second.join(timeout=60)
    waited = second.is_alive()
    fd = os.open(gate, os.O_WRONLY)  # release the compile (it holds the gate open to read)
    os.close(fd)
    prefix = bytecode.compiled(str(repo))
    assert not waited, "a second start waited for the running compile"
    assert prefix is not None
    assert any(Path(prefix).rglob("hubconf.*.pyc"))


def test_a_folders_bytecode_goes_when_the_folder_goes(tmp_path: Path) -> None:
    # Each call of a verified private copy (a fresh temporary folder) and each conversion
    # left its whole compiled copy in the process's bytecode folder until exit.
    first = _repo(tmp_path / "first")
    old = Path(bytecode.compiled(str(first)) or "")
    assert any(old.rglob("*.pyc"))
    shutil.rmtree(first)
    assert bytecode.compiled(str(_repo(tmp_path / "second"))) is not None
    assert not old.exists(), "a removed folder's bytecode was kept"


def test_a_folder_replaced_at_its_path_is_compiled_again(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "x")
    old = Path(bytecode.compiled(str(repo)) or "")
    shutil.rmtree(repo)
    _repo(tmp_path / "x")
    new = bytecode.compiled(str(repo))
    assert new is not None and Path(new) != old and not old.exists()
    assert any(Path(new).rglob("model.*.pyc"))


def test_the_compile_is_bounded_and_a_module_over_the_bound_is_left_to_the_child(
        tmp_path: Path) -> None:
    # The compile runs outside every sandbox limit: a 4 MiB list literal took 2 GB (a
    # 20 MB one 8 GB). Measured in a fresh process, whose only child is the compile.
    repo = _repo(tmp_path)
    (repo / "big.py").write_text("x = [" + "0," * (2 << 20) + "]\n")
    code = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        from safehub._sandbox import bytecode
        prefix = Path(bytecode.compiled({str(repo)!r}))  # removed as this process exits
        print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                          sorted(p.name for p in prefix.rglob("*.pyc"))]))
    """)
    root = str(Path(bytecode.__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    peak, found = json.loads(done.stdout)
    assert peak <= bytecode._MEMORY, f"the compile used {peak >> 20} MiB"
    model = Path(importlib.util.cache_from_source(str(repo / "pkg" / "model.py"))).name
    assert model in found and not any(name.startswith("big.") for name in found)
