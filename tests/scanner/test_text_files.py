"""Text files whose first bytes happen to be pickle opcodes (safehub/_scanner/textpickle.py).

``import os\\nimport torch\\n`` is protocol 0 INST: the pickle probe read it as an import
of ``mport os`` and called every hubconf.py that starts with ``import`` UNSAFE, so
``safehub scan DIR`` failed and a GitHub checkout holding one was refused. The real
loaders decide: ``_pickle.c`` fails at INST's MARK before reading anything, and
``pickle._Unpickler`` (joblib) asks ``__import__`` for ``mport os``, which names no
installed module. Such text is "not a model" (skipped in folder walks and checkouts);
text that completes a record or asks for a real module name stays judged as a pickle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub._scanner.textpickle import MAX_LOOKUPS, import_can_run
from safehub.cli import main
from safehub.findings import Verdict
from tests.scanner.conftest import rules, scan_one
from tests.scanner.oracle import FILE_READERS, PICKLE_READERS, run_real, scan_bytes

Fire = Callable[..., set[str]]

# Real-world-looking files, each starting with an opcode letter.
TEXTS = {
    "hubconf.py": b'import os\nimport torch\n\ndependencies = ["torch"]\n\n\n'
                  b'def resnet(pretrained=False):\n    """A ResNet."""\n    return None\n',
    "model.py": b"class Net:\n    def __init__(self):\n        self.n = 1\n",
    "infer.py": b"from pathlib import Path\nimport torch\n",
    "config.yaml": b"checkpoint: weights/net.pt\nlr: 0.001\nepochs: 10\n",
    "train.yaml": b"(defaults)\n- model: resnet\n",
    "setup.sh": b"cd /opt/app\nif [ -n \"$X\" ]; then\n  echo hi\nfi\n",
    "install.sh": b"if command -v python3; then\n  pip install -r requirements.txt\nfi\n",
    "README.md": b"Large image classifier\n\n(c) 2024 Acme\n",
    "NOTES.md": b"(c) 2024 Acme. See LICENSE.\n",
    "main.c": b"int main(void)\n{\n    return 0;\n}\n",
    "lib.c": b"include <stdio.h>\n#include <stdlib.h>\n",
    "requirements.txt": b"Flask==2.0\nSphinx\nnumpy>=1.24\n",
    "deps.txt": b"Lightning>=2\nInvoke\n",
    "Nfile.txt": b"Note: weights are below\n",
}

# Text that real loaders load or import from: stays a pickle, and unsafe.
POLYGLOTS = {
    "list_eval.txt": b"(lp0\ncbuiltins\neval\np1\na.",  # loads, importing builtins.eval
    "system.py": b"cos\nsystem\n(S'echo hi'\ntR.",  # runs os.system on load
    "joblib_only.txt": b"iantigravity\nx\n",  # joblib.load imports antigravity
    "dotted.txt": b"i.antigravity\nx\n",  # __import__('.antigravity') finds antigravity
    "second.yaml": b"cos\nsystem\ncfoo bar\nx\n",  # imports os before the dead name
}


def test_real_loaders_resolve_nothing_importable_from_the_texts() -> None:
    """Ground truth: no reader completes a record, and every name a reader asks for is
    one ``__import__`` cannot find an installed module for."""
    readers = [*PICKLE_READERS, "c_file_all", *FILE_READERS]
    items = [(reader, data) for data in TEXTS.values() for reader in readers]
    for (reader, data), real in zip(items, run_real(items), strict=True):
        assert not real.crashed, (reader, data)
        assert all(not r.ok for r in real.records), (reader, data, real.records)
        # The oracle stubs find_class and records "module.name"; the first lookup of the
        # joined name is the module's (or, for an empty module, stricter).
        assert not any(import_can_run(n) for n in real.names), (reader, data, real.names)


def test_the_polyglots_really_load_or_import() -> None:
    items = [(reader, data) for data in POLYGLOTS.values() for reader in ("c_file", "py")]
    results = run_real(items)
    loaded = {data for (_, data), real in zip(items, results, strict=True)
              if any(r.ok for r in real.records) or real.names}
    assert loaded == set(POLYGLOTS.values())


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_text_named_directly_is_not_called_unsafe(name: str) -> None:
    report = scan_bytes(TEXTS[name])
    assert report.verdict is Verdict.UNKNOWN, [(f.rule_id, f.message) for f in report.findings]
    assert report.format == "unknown"
    assert [f.rule_id for f in report.findings] == ["SH190"]
    assert "content is text" in report.findings[0].message


def test_hubconf_message_names_the_module_no_installed_module_has() -> None:
    (finding,) = scan_bytes(TEXTS["hubconf.py"]).findings
    assert "'mport os'" in finding.message


@pytest.mark.parametrize("name", sorted(POLYGLOTS))
def test_loadable_text_polyglots_stay_unsafe(name: str) -> None:
    report = scan_bytes(POLYGLOTS[name])
    assert report.verdict is Verdict.UNSAFE, [(f.rule_id, f.message) for f in report.findings]


def test_scan_dir_of_source_files_exits_0_and_skips_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    for name, data in TEXTS.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"lr": 0.1}, 2))
    assert main(["scan", "-f", "json", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(Path(f["path"]).name, f["verdict"]) for f in doc["files"]] == [("ok.pkl", "clean")]
    assert {Path(s["path"]).name for s in doc["skipped"]} == set(TEXTS)


def test_scan_dir_still_catches_text_polyglots(tmp_path: Path, fire: Fire) -> None:
    for name, data in {**TEXTS, **POLYGLOTS}.items():
        (tmp_path / name).write_bytes(data)
    marker = tmp_path / "system.py"
    marker.write_bytes(b"cos\nsystem\n(S'touch textpoly'\ntR.")
    assert fire([(marker, "pickle")]) == {"textpoly"}
    assert main(["scan", str(tmp_path)]) == 1
    for name in POLYGLOTS:
        assert scan_one(tmp_path / name).verdict is Verdict.UNSAFE, name
    assert "SH100" in rules(scan_one(marker))


def test_model_named_text_is_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "net.pt").write_bytes(TEXTS["hubconf.py"])
    assert main(["scan", str(tmp_path)]) == 2  # not a model, but the name says it is one


_MARK = "safehub_textmark"


@pytest.mark.parametrize("module", [
    _MARK, f".{_MARK}", f"{_MARK}.", f"{_MARK}.x y", f"{_MARK}.sub.x", f"..{_MARK}",
    f"x y.{_MARK}", f"mport {_MARK}", "", ".", f"{_MARK} x"])
def test_import_can_run_matches_the_real_import(tmp_path: Path, module: str) -> None:
    """Differential: a marker module on sys.path runs exactly when import_can_run says an
    installed module can be found (every lookup here that can find one finds the marker)."""
    (tmp_path / f"{_MARK}.py").write_text("open('ran', 'w').close()\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            f"try:\n    __import__({module!r})\nexcept Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert (tmp_path / "ran").exists() == import_can_run(module)


def test_leading_dot_import_in_a_tar_polyglot_is_caught(tmp_path: Path, fire: Fire) -> None:
    """``__import__('.mod')`` finds and runs ``mod``: a tar whose header reads as GLOBAL
    ``.mod`` is a pickle polyglot (the probe used to take the empty first part as proof
    that nothing could be imported)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("c.shmark_tar\nx\n")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    path = tmp_path / "archive.tar"
    path.write_bytes(buf.getvalue())
    setup = ("import sys; open('shmark_tar.py', 'w').write(\"open('tarfired', 'w').close()\");"
             " sys.path.insert(0, '.')")
    assert "tarfired" in fire([(path, "pickle", setup)])
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH114" in rules(report)


def _unfindable_names(count: int) -> bytes:
    """Protocol-0 text naming ``count`` distinct modules no finder answers (``-m0``, ...)."""
    return b"".join(b"c-m%d\nx\n0" % i for i in range(count))


def test_many_unfindable_names_cost_a_bounded_number_of_path_searches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scanattack6: every name a text read as a pickle asks for was searched on the import
    path (a find_spec each) and collected in a list scanned once per name: a 2.5 MB text
    of 200,000 such names kept ``safehub scan`` busy for over ten minutes. The searches are
    bounded per question; past the bound the names count as findable (fail closed: the
    text is judged as a pickle, never skipped as dead)."""
    import importlib.util

    data = _unfindable_names(MAX_LOOKUPS * 4)
    for load in (__import__("pickle").loads, __import__("pickle")._loads):
        with pytest.raises(ModuleNotFoundError):  # every reader stops at the first name
            load(data)
    searched: list[str] = []
    real_find_spec = importlib.util.find_spec

    def counting_find_spec(name: str, package: str | None = None) -> object:
        searched.append(name)
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", counting_find_spec)
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    report = scan_one(path)
    assert len(searched) <= 3 * MAX_LOOKUPS  # a bound per question, not one per name
    assert report.verdict is Verdict.UNSAFE  # past the bound: judged, not called dead
    few = tmp_path / "few.txt"
    few.write_bytes(_unfindable_names(3))
    assert "SH190" in rules(scan_one(few))  # a handful is still searched, and dead
