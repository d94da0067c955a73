"""Second review round: names that reach code through folders on the import path, and npz
members whose names look like folders.

- ``site-packages``, ``lib-dynload``, ``*-stubs``: folders on ``sys.path`` whose names are
  not Python identifiers still import (as namespace packages) and reach every module below
  them. A text file that GLOBALs ``site-packages.x.y`` is a pickle the loaders run, and no
  knowledge table lists ``site-packages.x.y``: it is critical.
- ``numpy.load`` opens an npz member named ``evil/`` (or ``evil.npy\\0/``, which zipfile
  cuts at the NUL) like any other: the bytes decide, not the name's shape.

Each attack first runs for real (a marker file appears), then the scanner must refuse it.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from safehub._scanner.textpickle import import_can_run
from safehub.findings import Verdict
from safehub.scan import scan_file


@pytest.fixture
def aliased_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on the import path whose name is not an identifier, holding a module
    whose ``run`` writes a marker."""
    root = tmp_path / "path"
    pkg = root / "my-models"
    pkg.mkdir(parents=True)
    (pkg / "payload.py").write_text(
        "def run(path):\n    open(path, 'w').write('ran')\n    return 0\n")
    monkeypatch.syspath_prepend(str(root))
    return root


def _text_pickle(marker: Path) -> bytes:
    # Protocol 0, all text, no STOP: the call runs before the loader fails at the end.
    return b"cmy-models.payload\nrun\n(S'" + str(marker).encode() + b"'\ntR"


@pytest.mark.parametrize("loader", ["pickle.load", "torch.load"])
def test_text_through_a_path_alias_runs_code_without_safehub(
        loader: str, aliased_folder: Path, tmp_path: Path) -> None:
    if loader == "torch.load":
        pytest.importorskip("torch")
    marker = tmp_path / "marker"
    model = tmp_path / "notes.txt"
    model.write_bytes(_text_pickle(marker))
    call = {"pickle.load": "import pickle; pickle.load(open(sys.argv[1], 'rb'))",
            "torch.load": "import torch; torch.load(sys.argv[1], weights_only=False)"}[loader]
    env = dict(os.environ, PYTHONPATH=str(aliased_folder))
    subprocess.run([sys.executable, "-c", f"import sys; {call}", str(model)], env=env,
                   capture_output=True, timeout=300, check=False)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("name", ["notes.txt", "pytorch_model.bin", "model.pkl"])
def test_text_through_a_path_alias_is_critical(name: str, aliased_folder: Path,
                                               tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(_text_pickle(tmp_path / "marker"))
    with open(path, "rb") as fh:
        report = scan_file(fh, name)
    assert report.verdict is Verdict.UNSAFE, report.findings
    assert any(f.rule_id == "SH100" and "my-models.payload.run" in f.message
               for f in report.findings), report.findings
    assert not (tmp_path / "marker").exists()


def test_import_lookup_follows_the_import_path(aliased_folder: Path) -> None:
    assert import_can_run("my-models.payload")
    assert import_can_run(".my-models")
    assert not import_can_run("mport os")  # `import os` read as INST: nothing answers
    assert not import_can_run("lass Foo:")
    assert not import_can_run("a\0b")
    assert import_can_run("antigravity")


def test_python_source_starting_with_import_stays_unflagged(tmp_path: Path) -> None:
    path = tmp_path / "hubconf.py"
    path.write_bytes(b"import os\nimport torch\n")
    with open(path, "rb") as fh:
        report = scan_file(fh, "hubconf.py")
    assert report.verdict is not Verdict.UNSAFE, report.findings


def _object_npy(marker: Path) -> bytes:
    # What np.save writes for an object array, with a pickle that opens (creates) a file.
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    payload = b"c__builtin__\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


@pytest.mark.parametrize("member", ["evil/", "evil.npy\0/"])
def test_npz_members_named_like_folders_are_read(member: str, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("weights.npy", b"")
        info = zipfile.ZipInfo("placeholder")
        info.filename = member  # set after construction: ZipInfo() itself cuts at NUL
        z.writestr(info, _object_npy(marker))
    path = tmp_path / "weights.npz"
    path.write_bytes(buf.getvalue())
    # Without safehub: numpy lists the member and its pickle runs.
    with np.load(path, allow_pickle=True) as npz:
        key = next(k for k in npz.files if k.startswith("evil"))
        with contextlib.suppress(Exception):  # the pickle returns a file, not an array
            npz[key]
    assert marker.exists()
    marker.unlink()
    with open(path, "rb") as fh:
        report = scan_file(fh, "weights.npz")
    assert report.verdict is Verdict.UNSAFE, report.findings
    assert any("open" in f.message for f in report.findings), report.findings
