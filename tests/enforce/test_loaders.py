"""Every loader an unmodified program reaches, with a real payload each.

For each loader family the payload first runs in a plain Python process (the marker
file appears); then the same program runs with the shipped sitecustomize.py on
PYTHONPATH, after a nested, looser `with safehub.enforce("permissive"): pass` scope has
ended, and the load is refused; then in this process, under enforce() with a looser
inner scope active and after it ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import safehub
from safehub.errors import SafehubError
from tests.enforce.payloads import PAYLOADS, Payload

_NESTED = """
import safehub
with safehub.enforce("permissive"):
    pass
"""

_PROGRAM = """
import os, sys
P = {path!r}
{prefix}
try:
    {load}
except BaseException as exc:
    print("REFUSED", type(exc).__name__, exc)
else:
    print("LOADED")
"""


def run_program(program: str, tmp_path: Path, *, enforced: bool,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``program`` in a fresh interpreter, with the shipped sitecustomize.py or not."""
    env = {k: v for k, v in os.environ.items() if k not in ("SAFEHUB_POLICY", "PYTHONPATH")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    env.update(extra_env or {})
    if enforced:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        shipped = Path(__file__).resolve().parents[2] / "examples" / "sitecustomize.py"
        (site / "sitecustomize.py").write_text(shipped.read_text())
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(program)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.name for p in PAYLOADS])
def test_payload_runs_without_safehub_and_is_refused_under_sitecustomize(
        payload: Payload, tmp_path: Path, marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    path = payload.make(tmp_path, marker)
    assert not marker.exists()
    plain = run_program(_PROGRAM.format(path=str(path), prefix="", load=payload.load),
                        tmp_path, enforced=False)
    assert marker.exists(), f"without safehub the payload runs: {plain.stdout}{plain.stderr}"
    marker.unlink()
    enforced = run_program(_PROGRAM.format(path=str(path), prefix=_NESTED, load=payload.load),
                           tmp_path, enforced=True)
    assert not marker.exists(), enforced.stdout + enforced.stderr
    assert "REFUSED" in enforced.stdout, enforced.stdout + enforced.stderr
    assert any(s in enforced.stdout for s in ("SH122", "PolicyViolation", "UnsafeModel",
                                              "SH120", "SH121", "SH100", "refused")), \
        enforced.stdout


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.name for p in PAYLOADS])
def test_payload_is_refused_in_process_inside_and_after_a_looser_scope(
        payload: Payload, tmp_path: Path, marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    path = payload.make(tmp_path, marker)
    namespace = {"P": str(path)}
    with safehub.enforce("default"):
        # dcp raises CheckpointException, a BaseException, around the refusal.
        with safehub.enforce("permissive"), pytest.raises(BaseException) as inside:
            exec(payload.load, dict(namespace))
        with pytest.raises(BaseException) as after:
            exec(payload.load, dict(namespace))
    assert not marker.exists()
    for err in (inside.value, after.value):
        assert isinstance(err, SafehubError) or "SH122" in str(err), repr(err)
