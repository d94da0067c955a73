"""A required layer that the host refuses stops the call before any repo code runs.

The host is made to refuse user namespaces the way Docker's default seccomp profile
does: a seccomp filter in a throwaway process denies ``unshare(CLONE_NEWUSER)``, and
the sandbox is started from there."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.sandbox.conftest import make_repo

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")

SCRIPT = r'''
import json, sys
from safehub._sandbox import seccomp

lib = seccomp.library()
ctx = lib.seccomp_init(0x7FFF0000)  # allow by default
rule = (seccomp._ArgCmp * 1)(seccomp._ArgCmp(0, 7, 0x10000000, 0x10000000))  # NEWUSER set
assert lib.seccomp_rule_add_array(ctx, 0x00050000 | 1, lib.seccomp_syscall_resolve_name(
    b"unshare"), 1, rule) == 0
assert lib.seccomp_load(ctx) == 0

from safehub.sandbox import IsolationUnavailable, Layer, Sandbox, SandboxRequest

repo = sys.argv[1]
weak = {Layer.LANDLOCK, Layer.SECCOMP, Layer.UID, Layer.MOUNTNS}  # so that a marker could land
out = {}
with Sandbox() as sandbox:
    try:
        sandbox.run(SandboxRequest.for_list(repo, required_layers={Layer.USERNS},
                                            unsafe_skip_layers=weak))
    except IsolationUnavailable as exc:
        out["refused"] = {"layer": exc.layer.value, "rule": exc.rule_id,
                          "text": exc.diagnostics()}
    result = sandbox.run(SandboxRequest.for_list(repo, unsafe_skip_layers=weak))
    out["degraded"] = {"entrypoints": list(result.entrypoints),
                       "missing": {k.value: v for k, v in result.layers_missing.items()}}
print(json.dumps(out))
'''


def test_missing_required_layer_refuses_before_repo_code(tmp_path: Path) -> None:
    marker = Path(tempfile.gettempdir()) / f"safehub-required-{time.time_ns()}"
    repo = make_repo(tmp_path / "repo", f"""
        open({str(marker)!r}, "a").write("imported\\n")
        def model():
            pass
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(repo)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        refused = out["refused"]
        assert refused["layer"] == "userns" and refused["rule"] == "SH500"
        assert "nothing was run" in refused["text"] and "safehub doctor" in refused["text"]
        assert "Operation not permitted" in refused["text"]
        # Optional, the layer is reported missing and the call degrades.
        assert out["degraded"]["entrypoints"] == ["model"]
        assert "userns" in out["degraded"]["missing"]
        # The import ran once: in the degraded call, never in the refused one.
        assert marker.read_text() == "imported\n"
    finally:
        marker.unlink(missing_ok=True)
