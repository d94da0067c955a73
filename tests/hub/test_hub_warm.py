"""Warm sandboxes: the installed packages a hubconf declares are imported once in the
zygote (site-packages only, never the repo's own modules, unless the caller already
imported the installed package, as torch.hub then uses it) and reused across calls."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import safehub
from safehub._hub.deps import preloadable_dependencies
from safehub._sandbox import supervisor

HUBCONF = textwrap.dedent('''
    dependencies = ["torch", "safetensors", "math", "os.path"]
    import sys
    import torch
    WAS_LOADED = "safetensors" in sys.modules
    import safetensors


    def probe():
        return {"preloaded": torch.tensor([WAS_LOADED]),
                "from_repo": torch.tensor([getattr(safetensors, "FROM_REPO", False)])}
''')


def test_declared_installed_packages_are_preloaded_and_reused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    # math is stdlib, not site-packages; os.path is not a top-level name.
    assert preloadable_dependencies(repo) == ("safetensors",)
    first = safehub.load(str(repo), "probe", source="local")
    assert first["preloaded"].item() is True and first["from_repo"].item() is False
    zygote = supervisor._warm[("safetensors",)].zygote_pid
    safehub.load(str(repo), "probe", source="local")
    assert supervisor._warm[("safetensors",)].zygote_pid == zygote, "the zygote was reused"


SHADOWED = textwrap.dedent('''
    dependencies = ["torch", "tomli_w"]
    import torch
    import tomli_w


    def probe():
        return {"from_repo": torch.tensor([getattr(tomli_w, "FROM_REPO", False)])}
''')


def _shadowing_repo(root: Path, shipped_as: str = "package") -> Path:
    """A repo shipping its own top-level ``tomli_w`` (an installed package, a safehub
    dependency that neither safehub nor torch imports for a load): a package folder, or
    sourceless bytecode (``tomli_w.pyc``, which the import system takes as the module)."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    if shipped_as == "package":
        (repo / "tomli_w").mkdir()
        (repo / "tomli_w" / "__init__.py").write_text("FROM_REPO = True\n")
    else:
        source = root / "tomli_w_source.py"
        source.write_text("FROM_REPO = True\n")
        py_compile.compile(str(source), cfile=str(repo / "tomli_w.pyc"), doraise=True)
    (repo / "hubconf.py").write_text(SHADOWED)
    return repo


def _from_repo(repo: Path, *, caller_imports: bool, plain_torch_hub: bool) -> bool:
    """Which tomli_w the entrypoint got, called from a fresh process that imported the
    installed tomli_w first or not; through safehub or plain torch.hub."""
    call = (f"torch.hub.load({str(repo)!r}, 'probe', source='local', trust_repo=True)"
            if plain_torch_hub else f"safehub.load({str(repo)!r}, 'probe', source='local')")
    code = textwrap.dedent(f"""
        import json, sys
        {"import tomli_w" if caller_imports else ""}
        import torch, safehub
        from safehub._hub.deps import preloadable_dependencies
        preload = preloadable_dependencies(__import__("pathlib").Path({str(repo)!r}))
        state = {call}
        print(json.dumps([bool(state["from_repo"].item()), list(preload)]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=Path(safehub.__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    from_repo, preload = json.loads(done.stdout.strip().splitlines()[-1])
    if not plain_torch_hub:
        assert preload == ([] if from_repo else ["tomli_w"])
    return bool(from_repo)


@pytest.mark.parametrize("shipped_as", ["package", "sourceless"])
def test_a_package_the_repo_ships_is_never_preloaded(tmp_path: Path, shipped_as: str) -> None:
    # A sourceless ``tomli_w.pyc`` was not seen as shipped: the zygote preloaded the
    # installed tomli_w, and the entrypoint ran with it instead of the repo's module.
    repo = _shadowing_repo(tmp_path, shipped_as)
    # As torch.hub in a fresh process: the repo's own copy is imported, not the
    # installed package.
    assert _from_repo(repo, caller_imports=False, plain_torch_hub=True) is True
    assert _from_repo(repo, caller_imports=False, plain_torch_hub=False) is True


def test_an_installed_package_the_caller_imported_wins_over_the_repos_copy(
        tmp_path: Path) -> None:
    # torch.hub finds a package the caller already imported in sys.modules and never
    # imports the repo's copy (`import torchvision` before loading pytorch/vision, whose
    # checkout has no compiled ops and cannot be imported); the sandboxed child got the
    # repo's copy. The zygote now preloads the installed one, as the caller's process has it.
    repo = _shadowing_repo(tmp_path)
    assert _from_repo(repo, caller_imports=True, plain_torch_hub=True) is False
    assert _from_repo(repo, caller_imports=True, plain_torch_hub=False) is False


def test_hubconf_that_does_not_parse_preloads_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("dependencies = ['safetensors'\n")
    assert preloadable_dependencies(repo) == ()


def test_repo_modules_are_read_from_the_parents_compiled_copy(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    # More source than the child is left to compile itself (bytecode._SMALL_SOURCE).
    (repo / "helper.py").write_text("VALUE = 3\n" + "# padding\n" * 4000)
    (repo / "hubconf.py").write_text(textwrap.dedent('''
        import os
        import torch
        import helper


        def probe():
            cached = helper.__cached__
            return {"outside_repo": torch.tensor([not cached.startswith(os.path.dirname(
                        helper.__file__))]),
                    "exists": torch.tensor([os.path.exists(cached)]),
                    "value": torch.tensor([helper.VALUE])}
    '''))
    state = safehub.load(str(repo), "probe", source="local")
    assert state["outside_repo"].item() and state["exists"].item()
    assert state["value"].item() == 3
    assert not list(repo.rglob("__pycache__")), "nothing was written into the repo"


def test_first_call_starts_the_zygote_before_importing_the_policy_engine(tmp_path: Path) -> None:
    # A process's first call pays the zygote's start (seconds): it must begin before the
    # policy engine and the fetch layer are imported, not after them.
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("def tiny():\n    return {}\n")
    script = textwrap.dedent(f'''
        import sys
        import threading
        seen = []
        start = threading.Thread.start

        def noting_start(thread):
            # The zygote is started by a thread of its own (it waits for the greeting):
            # what counts is what the caller had imported when that thread began.
            if thread.name == "safehub-zygote-start" and not seen:
                seen.append(sorted(m for m in ("pydantic", "safehub._policy.loader",
                                               "safehub._fetch.http", "torch")
                                   if m in sys.modules))
            return start(thread)

        threading.Thread.start = noting_start
        import safehub
        try:
            safehub.list({str(repo)!r}, source="local")
        finally:
            print("already imported:", seen[0] if seen else "no zygote started")
    ''')
    root = str(Path(safehub.__file__).resolve().parents[1])  # this checkout's safehub
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": root})
    assert "already imported: []" in done.stdout, done.stdout + done.stderr


def test_a_second_early_start_does_not_wait_for_the_zygote() -> None:
    # The API starts the zygote early, then the runner asks again: that second request must
    # return at once, not hold the caller until the zygote (importing torch, seconds) greets.
    sandbox = supervisor.Sandbox()
    try:
        sandbox.start_in_background()
        deadline = time.monotonic() + 60
        while sandbox._proc is None and time.monotonic() < deadline:
            time.sleep(0.001)  # the starting thread holds the sandbox's lock from here on
        sandbox.start_in_background()
        starter = sandbox._starter
        assert starter is not None and starter.is_alive(), "the second start waited"
        sandbox.start()
        assert sandbox.zygote_pid is not None
    finally:
        sandbox.close()


def test_a_large_hubconf_costs_the_caller_nothing(tmp_path: Path) -> None:
    # The parent parses the hubconf for its ``dependencies`` before any sandbox exists: a
    # 4 MiB list literal cost the caller's own process 16 s of CPU and 2 GB of memory, at
    # every call. Above the bound nothing is parsed (and nothing preloaded).
    repo = tmp_path / "repo"
    repo.mkdir()
    filler = "x = [" + "0," * (512 << 10) + "]\n"  # 1 MiB, ~500 MB to parse
    (repo / "hubconf.py").write_text('dependencies = ["safetensors"]\n' + filler)
    code = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from safehub._hub.deps import preloadable_dependencies
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        found = preloadable_dependencies(Path({str(repo)!r}))
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(list(found), grew // 1024)
    """)
    root = str(Path(safehub.__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    found, grew_mb = done.stdout.split("] ")
    assert found == "[" and int(grew_mb) < 64, done.stdout


def test_a_shipped_pyc_never_runs_in_place_of_its_source(tmp_path: Path) -> None:
    # The child read the parent's bytecode only for paths spelled under the repo folder:
    # reached through a symbolic link, a hubconf putting its real path on sys.path had its
    # modules' bytecode looked up in the repo's own __pycache__, where an unchecked-hash
    # .pyc (never compared with its source) ran instead of the source.
    real = tmp_path / "real"
    (real / "src").mkdir(parents=True)
    (real / "hubconf.py").write_text(textwrap.dedent('''
        import os, sys
        import torch
        sys.path.insert(0, os.path.join(os.path.realpath(os.path.dirname(__file__)), "src"))
        import helper


        def probe():
            return {"value": torch.tensor([helper.VALUE])}
    '''))
    (real / "src" / "helper.py").write_text("VALUE = 1\n")
    shipped = tmp_path / "shipped.py"
    shipped.write_text("VALUE = 666\n")
    py_compile.compile(str(shipped), doraise=True,
                       cfile=importlib.util.cache_from_source(str(real / "src" / "helper.py")),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    link = real / "again"  # the repo reached through a link (one the sandbox may follow)
    link.symlink_to(".")
    plain = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.hub.load("
         f"{str(link)!r}, 'probe', source='local', trust_repo=True)['value'].item())"],
        capture_output=True, text=True, timeout=300)
    assert plain.stdout.split()[-1:] == ["666"], plain.stderr[-2000:]  # torch.hub takes it
    assert safehub.load(str(link), "probe", source="local")["value"].item() == 1
    assert safehub.load(str(real), "probe", source="local")["value"].item() == 1


def test_without_a_compiled_copy_a_shipped_pyc_still_never_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # When the parent cannot make the bytecode folder (/tmp full), the child fell back to
    # the repository's own __pycache__, where an unchecked-hash .pyc (never compared with
    # its source) ran instead of the source.
    from safehub._sandbox import bytecode

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent('''
        import torch
        import helper


        def probe():
            return {"value": torch.tensor([helper.VALUE])}
    '''))
    (repo / "helper.py").write_text("VALUE = 1\n")
    shipped = tmp_path / "shipped.py"
    shipped.write_text("VALUE = 666\n")
    py_compile.compile(str(shipped), doraise=True,
                       cfile=importlib.util.cache_from_source(str(repo / "helper.py")),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    monkeypatch.setattr(bytecode, "compiled", lambda repo_dir: None)
    assert safehub.load(str(repo), "probe", source="local")["value"].item() == 1
