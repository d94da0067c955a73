"""Models signed by the reference tool (model_signing 1.1.1): every case agrees with `expect`,
through the Python API and through the CLI's exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from safehub.signing import TrustedCertificates, TrustedKey, verify

pytestmark = pytest.mark.shared


def _cases(shared: Path) -> list[dict[str, Any]]:
    doc = json.loads((shared / "signing" / "expected.json").read_text())
    cases: list[dict[str, Any]] = doc["cases"]
    return cases


@pytest.fixture(scope="module")
def cases(shared_dir: Path) -> list[dict[str, Any]]:
    if not (shared_dir / "signing" / "expected.json").is_file():
        pytest.skip("../shared/signing not present")
    return _cases(shared_dir)


def _trust_args(base: Path, trust: dict[str, str]) -> dict[str, Any]:
    if "public_key" in trust:
        return {"trust": TrustedKey.from_path(base / trust["public_key"])}
    return {"trust": TrustedCertificates.from_paths([base / trust["certificate_chain"]])}


def test_api_agrees_with_every_case(shared_dir: Path, cases: list[dict[str, Any]]) -> None:
    base = shared_dir / "signing"
    wrong = []
    for case in cases:
        ignore = bool(case["options"].get("ignore_unsigned_files"))
        # model_signing's --ignore_unsigned_files ignores every unsigned file, code
        # included; safehub's library only does that when told so explicitly.
        result = verify(base / case["model"], signature=base / case["signature"],
                        ignore_unsigned_files=ignore, unsafe_ignore_unsigned_code=ignore,
                        **_trust_args(base, case["trust"]))
        got = "pass" if result.ok else "fail"
        if got != case["expect"]:
            wrong.append(f"{case['name']}: expected {case['expect']}, got {got}: "
                         f"{[str(f) for f in result.failures]}")
        if got == "fail":
            assert result.failures, case["name"]
    assert not wrong, "\n".join(wrong)


def test_cli_agrees_with_every_case(shared_dir: Path, cases: list[dict[str, Any]],
                                    cli: Any) -> None:
    base = shared_dir / "signing"
    wrong = []
    for case in cases:
        args = ["verify", base / case["model"], "--signature", base / case["signature"]]
        trust = case["trust"]
        if "public_key" in trust:
            args += ["--key", base / trust["public_key"]]
        else:
            args += ["--certificate-chain", base / trust["certificate_chain"]]
        if case["options"].get("ignore_unsigned_files"):
            args.append("--ignore-unsigned-files")
        res = cli(*args)
        want = 0 if case["expect"] == "pass" else 1
        if res.code != want:
            wrong.append(f"{case['name']}: exit {res.code}, expected {want}\n{res.err}")
        if want == 1:
            assert "NOT verified" in res.err, case["name"]
    assert not wrong, "\n".join(wrong)


def test_library_refuses_unsigned_code_that_the_reference_ignores(
        shared_dir: Path, cases: list[dict[str, Any]]) -> None:
    # `extra_file__ignore_unsigned` passes with the reference tool, which ignores every
    # unsigned file. Its extra file is Python code (tiny/evil.py): safehub's library
    # refuses it unless the caller opts into the unsafe behaviour.
    case = next(c for c in cases if c["name"] == "extra_file__ignore_unsigned")
    base = shared_dir / "signing"
    result = verify(base / case["model"], signature=base / case["signature"],
                    ignore_unsigned_files=True, **_trust_args(base, case["trust"]))
    assert not result.ok
    assert [(f.kind.value, f.path) for f in result.failures] == [("unsigned-code",
                                                                  "tiny/evil.py")]


def test_failures_name_file_digest_and_key(shared_dir: Path, cli: Any) -> None:
    base = shared_dir / "signing"
    res = cli("verify", base / "cases/tampered_weights/model", "--key", base / "keys/key_a.pub")
    assert res.code == 1
    assert "model.pt" in res.err
    assert "sha256:71a2d81282ab83f97935ececbec08da6b58a369768d26bf280531fe7eeeadcfd" in res.err
    assert TrustedKey.from_path(base / "keys/key_a.pub").fingerprint in res.err
    res = cli("verify", base / "cases/valid_key_a/model", "--key", base / "keys/key_b.pub")
    assert res.code == 1
    assert "different key" in res.err and TrustedKey.from_path(
        base / "keys/key_b.pub").fingerprint in res.err
