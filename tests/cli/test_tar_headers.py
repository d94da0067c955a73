"""A legacy torch tar whose pax headers are built to be copied: bounded, a finding."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.conftest import run_module


def test_global_pax_keys_copied_into_every_member_are_bounded(tmp_path: Path) -> None:
    # tarfile copies the global pax keys into every member after them: 60,000 tiny keys
    # before 2,000 empty members (1.7 MB) took the scan 3.7 GiB and 27 s, growing with
    # each member (10,000 allowed). torch.load's legacy tar path reads it the same way.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={f"k{i}": "v" for i in range(60_000)}) as tf:
        for i in range(2_000):
            tf.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    (tmp_path / "m.pt").write_bytes(buf.getvalue())
    result = run_module("scan", "m.pt", "-f", "json", cwd=tmp_path)
    assert result.code == 1, result.err
    [report] = json.loads(result.out)["files"]
    assert [f["rule_id"] for f in report["findings"]] == ["SH191"], report
