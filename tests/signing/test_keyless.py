"""Keyless Sigstore verification is an optional extra, reported as unavailable without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from safehub.signing import SigstoreIdentity, sign, verify
from tests.conftest import REPO
from tests.signing.helpers import make_key, make_model

# Runs in a fresh interpreter where `import sigstore` fails exactly as it does when the
# package is not installed (the dev environment has it, through model-signing).
_WITHOUT_SIGSTORE = r"""
import json, sys
for name in [m for m in sys.modules if m == "sigstore" or m.startswith("sigstore.")]:
    del sys.modules[name]
sys.modules["sigstore"] = None
from safehub.errors import SafehubError
from safehub.signing import SigstoreIdentity, sigstore_available, verify
out = {"available": sigstore_available()}
try:
    verify(sys.argv[1], trust=SigstoreIdentity("ml@example.com", "https://accounts.example"))
except SafehubError as exc:
    out.update(type=type(exc).__name__, diagnostics=exc.diagnostics())
if len(sys.argv) > 2:
    from safehub.cli import main
    out["exit"] = main(["verify", sys.argv[1], "--sigstore-identity", "ml@example.com",
                        "--sigstore-issuer", "https://accounts.example"])
print(json.dumps(out))
"""


def _run_without_sigstore(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_SIGSTORE, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


def test_keyless_is_reported_unavailable_without_sigstore(tmp_path: Path) -> None:
    key = make_key(tmp_path, "k")
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path)
    out = _run_without_sigstore(str(m), "cli")
    assert out["available"] is False
    assert out["type"] == "SafehubError", "unavailable is an error, never a pass or a crash"
    assert "unavailable" in out["diagnostics"]
    assert "pip install 'safehub[sigstore]'" in out["diagnostics"]
    assert out["exit"] == 2
    assert "unavailable" in out["stderr"]


def test_keyless_refuses_a_key_signed_bundle_when_sigstore_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("sigstore.verify", reason="sigstore not installed")
    key = make_key(tmp_path, "k")
    m = make_model(tmp_path / "m")
    sign(m, private_key=key.private_path)
    result = verify(m, trust=SigstoreIdentity("ml@example.com", "https://accounts.example"))
    assert not result.ok
    assert [f.kind.value for f in result.failures] == ["signature-invalid"]
