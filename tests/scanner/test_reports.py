"""Report formats against golden files, for a small fixed set of generated inputs.

Regenerate after an intended change with ``SAFEHUB_REGEN_GOLDEN=1 pytest tests/scanner/
test_reports.py`` and review the diff. Paths are made relative by scanning from inside the
folder; the tool version and the folder's absolute URI are replaced by placeholders.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest

from safehub import __version__
from safehub._format import OutputFormat, render_report
from safehub.scan import scan
from tests.scanner import _builders as B

GOLDEN = Path(__file__).parent / "golden"
REGEN = bool(os.environ.get("SAFEHUB_REGEN_GOLDEN"))


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    B.write(d / "clean.pkl", pickle.dumps({"lr": 0.5, "layers": [64, 64]}, protocol=2))
    B.write(d / "evil.pkl", B.os_system_p0("pwned"))
    B.write(d / "computed.pkl", b"\x80\x04" + B.stack_global("_codecs", "encode")
            + B.binunicode("bf") + B.binunicode("rot13") + b"\x86R" + B.binunicode("system")
            + b"\x93" + B.binunicode("id") + b"\x85R.")
    B.write(d / "notes.txt", b"not a model\n")
    B.write(d / "weights.pt", b"\x00\x01\x02 garbage")
    monkeypatch.chdir(d)
    return d


def _normalize(text: str, folder: Path) -> str:
    text = text.replace(folder.as_uri(), "file:///SRCROOT")
    text = text.replace(os.fspath(folder), "<DIR>")
    return re.sub(re.escape(json.dumps(__version__))[1:-1], "<VERSION>", text)


@pytest.mark.parametrize(("fmt", "suffix", "verbose"), [
    (OutputFormat.TEXT, "txt", False), (OutputFormat.TEXT, "verbose.txt", True),
    (OutputFormat.JSON, "json", False), (OutputFormat.SARIF, "sarif", False)])
def test_report_matches_golden(inputs: Path, fmt: OutputFormat, suffix: str,
                               verbose: bool) -> None:
    report = scan(".")
    text = _normalize(render_report(report, fmt, verbose=verbose), inputs)
    golden = GOLDEN / f"scan_report.{suffix}"
    if REGEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"missing {golden}; run with SAFEHUB_REGEN_GOLDEN=1"
    assert text == golden.read_text()


def test_sarif_golden_validates_against_the_schema(shared_dir: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((shared_dir / "schemas" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validate(json.loads((GOLDEN / "scan_report.sarif").read_text()), schema)


def test_text_report_colors_only_on_request(inputs: Path) -> None:
    report = scan("evil.pkl")
    assert "\x1b[" not in render_report(report, OutputFormat.TEXT)
    assert "\x1b[31m" in render_report(report, OutputFormat.TEXT, color=True)


def test_json_report_is_stable_across_runs(inputs: Path) -> None:
    first = render_report(scan("."), OutputFormat.JSON)
    assert render_report(scan("."), OutputFormat.JSON) == first


def test_fingerprints_ignore_byte_offsets(inputs: Path) -> None:
    before = {f.fingerprint() for f in scan("evil.pkl").findings}
    B.write(inputs / "evil.pkl", b"N0" + B.os_system_p0("pwned"))
    after = {f.fingerprint() for f in scan("evil.pkl").findings}
    assert before == after
