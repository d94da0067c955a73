"""`safehub sign` and `safehub verify`: exit codes, streams and reports."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safehub.signing import TrustedKey
from tests.conftest import run_module
from tests.signing.helpers import KeyPair, make_key, make_model, make_pki

Cli = Callable[..., Any]


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path, "signer")


@pytest.fixture
def model(tmp_path: Path, key: KeyPair, cli: Cli) -> Path:
    m = make_model(tmp_path / "model")
    res = cli("sign", m, "--key", key.private_path)
    assert res.code == 0, res.err
    assert res.out.strip() == str(m / "model.sig")
    return m


def test_verify_ok(model: Path, key: KeyPair, cli: Cli) -> None:
    res = cli("verify", model, "--key", key.public_path)
    assert res.code == 0, res.err
    assert res.out.startswith("verified: ")
    assert "files verified: 5" in res.out
    assert TrustedKey.from_path(key.public_path).fingerprint in res.err


def test_verify_failure_names_file_digests_and_key(model: Path, key: KeyPair, cli: Cli) -> None:
    (model / "model.pt").write_bytes(b"tampered")
    res = cli("verify", model, "--key", key.public_path)
    assert res.code == 1
    assert res.out.startswith("NOT verified: ")
    assert "SH300 digest-mismatch model.pt" in res.err
    assert "sha256:" + hashlib.sha256(b"tampered").hexdigest() in res.err
    assert TrustedKey.from_path(key.public_path).fingerprint in res.err


def test_verify_wrong_key_exits_1(model: Path, tmp_path: Path, cli: Cli) -> None:
    other = make_key(tmp_path, "other")
    res = cli("verify", model, "--key", other.public_path)
    assert res.code == 1
    assert "SH301" in res.err and TrustedKey.from_path(other.public_path).fingerprint in res.err


def test_verify_json_report(model: Path, key: KeyPair, cli: Cli, tmp_path: Path) -> None:
    (model / "extra.txt").write_text("x")
    res = cli("verify", model, "--key", key.public_path, "-f", "json")
    assert res.code == 1
    doc = json.loads(res.out)
    assert doc["schema_version"] == "1" and doc["command"] == "verify"
    assert doc["ok"] is False
    assert doc["failures"] == [{"rule_id": "SH302", "kind": "unsigned-file", "path": "extra.txt",
                                "message": "not covered by the signature", "expected": None,
                                "actual": None}]
    assert doc["signer"]["key_fingerprint"] == TrustedKey.from_path(key.public_path).fingerprint
    out = tmp_path / "report.json"
    res = cli("verify", model, "--key", key.public_path, "-f", "json", "-o", out,
              "--ignore-unsigned-files")
    assert res.code == 0 and res.out == ""
    assert json.loads(out.read_text())["unsigned_ignored"] == ["extra.txt"]


def test_ignore_unsigned_files_follows_the_standard_and_warns_about_code(
        model: Path, key: KeyPair, cli: Cli) -> None:
    (model / "tiny" / "evil.py").write_text("print('unsigned')\n")
    assert cli("verify", model, "--key", key.public_path).code == 1
    res = cli("verify", model, "--key", key.public_path, "--ignore-unsigned-files")
    assert res.code == 0
    assert "unsafe: ignoring unsigned code tiny/evil.py" in res.err


@pytest.mark.parametrize("args", [
    ["verify", "{missing}", "--key", "{pub}"],
    ["verify", "{model}", "--key", "{missing}"],
    ["verify", "{model}", "--key", "{pub}", "--signature", "{missing}"],
    ["verify", "{model}"],
    ["verify", "{model}", "--key", "{pub}", "--certificate-chain", "{pub}"],
    ["verify", "{model}", "--sigstore-identity", "me@example.com"],
    ["verify", "{model}", "--certificate-chain", "{pub}"],
    ["sign", "{missing}", "--key", "{priv}"],
    ["sign", "{model}", "--key", "{pub}"],
])
def test_errors_exit_2(model: Path, key: KeyPair, tmp_path: Path, cli: Cli,
                       args: list[str]) -> None:
    values = {"model": model, "pub": key.public_path, "priv": key.private_path,
              "missing": tmp_path / "missing"}
    res = cli(*[a.format(**values) for a in args])
    assert res.code == 2, res.err


def test_sign_certificate_shards_and_detached(tmp_path: Path, cli: Cli) -> None:
    pki = make_pki(tmp_path / "pki")
    m = make_model(tmp_path / "m")
    sig = tmp_path / "detached.sig"
    res = cli("sign", m, "--key", pki.leaf_key.private_path, "--certificate-chain",
              pki.chain_path, "--signature", sig, "--shard-size", "1000")
    assert res.code == 0, res.err
    res = cli("verify", m, "--signature", sig, "--certificate-chain", pki.root_path)
    assert res.code == 0, res.err
    assert "certificate 'O=safehub-tests,CN=pki signer'" in res.out


def test_python_dash_m_streams(model: Path, key: KeyPair) -> None:
    res = run_module("verify", model, "--key", key.public_path)
    assert res.code == 0, res.err
    assert res.out.startswith("verified: ") and "safehub:" not in res.out
    assert res.err.startswith("safehub: verified ")
    (model / "README.md").unlink()
    res = run_module("-q", "verify", model, "--key", key.public_path)
    assert res.code == 1 and res.out == ""
    assert "SH303 missing-file README.md" in res.err


def test_model_signing_option_spellings(model: Path, key: KeyPair, cli: Cli) -> None:
    (model / "notes.txt").write_text("x")
    res = cli("verify", model, "--signature", model / "model.sig", "--public_key",
              key.public_path, "--ignore_unsigned_files")
    assert res.code == 0, res.err
