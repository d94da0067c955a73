"""Sign and verify model trees built here, with fresh keys; each refusal on its own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safehub.errors import IntegrityError, SafehubError
from safehub.signing import (
    FailureKind,
    SignatureInvalid,
    SignatureMissing,
    TrustedKey,
    load_signature,
    sign,
    verify,
)
from tests.signing.helpers import (
    KeyPair,
    file_resources,
    make_key,
    make_model,
    pae,
    statement,
    write_forged,
)


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path, "signer")


@pytest.fixture
def model(tmp_path: Path, key: KeyPair) -> Path:
    m = make_model(tmp_path / "model")
    sign(m, private_key=key.private_path)
    return m


def kinds(result: object) -> list[tuple[str, str | None]]:
    return [(f.kind.value, f.path) for f in result.failures]  # type: ignore[attr-defined]


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_roundtrip_and_wrong_key_per_curve(tmp_path: Path, curve: str) -> None:
    key = make_key(tmp_path, "k", curve)
    other = make_key(tmp_path, "other", curve)
    m = make_model(tmp_path / "m")
    sig = sign(m, private_key=key.private_path)
    assert sig == m / "model.sig"
    ok = verify(m, public_key=key.public_path)
    assert ok.ok, ok.failures
    assert ok.signer is not None and ok.signer.kind == "key"
    assert ok.signer.key_fingerprint == TrustedKey.from_path(key.public_path).fingerprint
    assert set(ok.files) == {"hubconf.py", "tiny/__init__.py", "model.pt", "config.json",
                             "README.md"}
    assert ok.files["model.pt"] == "sha256:" + hashlib.sha256(
        (m / "model.pt").read_bytes()).hexdigest()
    bad = verify(m, public_key=other.public_path)
    assert not bad.ok and bad.signer is None
    assert kinds(bad) == [("signature-invalid", None)]
    assert "different key" in bad.failures[0].message
    with pytest.raises(IntegrityError) as info:
        bad.raise_for_failure()
    assert TrustedKey.from_path(other.public_path).fingerprint in info.value.diagnostics()


def test_tampered_weights(model: Path, key: KeyPair) -> None:
    data = bytearray((model / "model.pt").read_bytes())
    data[100] ^= 1
    (model / "model.pt").write_bytes(bytes(data))
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("digest-mismatch", "model.pt")]
    failure = result.failures[0]
    assert failure.rule_id == "SH300"
    assert failure.actual == "sha256:" + hashlib.sha256(bytes(data)).hexdigest()
    assert failure.expected is not None and failure.expected != failure.actual
    assert "model.pt" not in result.files


def test_tampered_code_runs_without_safehub_and_is_refused(model: Path, key: KeyPair,
                                                           marker_dir: Path) -> None:
    marker = marker_dir / "pwned"
    (model / "hubconf.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\ndependencies = []\n")
    # Without verification, loading the repo's hubconf (what torch.hub does) runs it.
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                    "import hubconf", str(model)], check=True, timeout=60)
    assert marker.exists()
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("digest-mismatch", "hubconf.py")]


def test_extra_unsigned_data_file(model: Path, key: KeyPair) -> None:
    (model / "notes.txt").write_text("added later")
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("unsigned-file", "notes.txt")]
    assert result.failures[0].rule_id == "SH302"
    lenient = verify(model, public_key=key.public_path, ignore_unsigned_files=True)
    assert lenient.ok and lenient.unsigned_ignored == ("notes.txt",)


@pytest.mark.parametrize("extra", ["tiny/evil.py", "safetensors.py",
                                   "__pycache__/hubconf.cpython-311.pyc", "tiny/_ext.so"])
def test_unsigned_code_fails_even_when_ignoring_unsigned_files(model: Path, key: KeyPair,
                                                                extra: str) -> None:
    path = model / extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"print('unsigned')\n")
    for ignore in (False, True):
        result = verify(model, public_key=key.public_path, ignore_unsigned_files=ignore)
        assert kinds(result) == [("unsigned-code", extra)], ignore
        assert result.failures[0].rule_id == "SH302"
    unsafe = verify(model, public_key=key.public_path, ignore_unsigned_files=True,
                    unsafe_ignore_unsigned_code=True)
    assert unsafe.ok and unsafe.unsigned_ignored == (extra,)


def test_unsigned_module_shadowing_a_dependency_is_the_attack(tmp_path: Path, key: KeyPair,
                                                              marker_dir: Path) -> None:
    # The signed hubconf imports a third-party dependency; an unsigned module of the same
    # name dropped into the repo folder is imported instead (the repo is on sys.path).
    m = make_model(tmp_path / "repo")
    (m / "hubconf.py").write_text("import safetensors\ndependencies = []\n")
    sign(m, private_key=key.private_path)
    marker = marker_dir / "shadowed"
    (m / "safetensors.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                    "import hubconf", str(m)], check=True, timeout=60)
    assert marker.exists()
    result = verify(m, public_key=key.public_path, ignore_unsigned_files=True)
    assert kinds(result) == [("unsigned-code", "safetensors.py")]


def test_missing_and_renamed_files(model: Path, key: KeyPair) -> None:
    (model / "README.md").unlink()
    (model / "config.json").rename(model / "config2.json")
    result = verify(model, public_key=key.public_path)
    assert sorted(kinds(result)) == [("missing-file", "README.md"),
                                     ("missing-file", "config.json"),
                                     ("unsigned-file", "config2.json")]
    assert {f.rule_id for f in result.failures} == {"SH302", "SH303"}


def test_every_problem_is_reported_at_once(model: Path, key: KeyPair) -> None:
    (model / "model.pt").write_bytes(b"changed")
    (model / "README.md").unlink()
    (model / "extra.bin").write_bytes(b"x")
    result = verify(model, public_key=key.public_path)
    assert sorted(kinds(result)) == [("digest-mismatch", "model.pt"),
                                     ("missing-file", "README.md"),
                                     ("unsigned-file", "extra.bin")]


def test_symlink_is_refused_even_to_identical_bytes(model: Path, key: KeyPair,
                                                   tmp_path: Path) -> None:
    outside = tmp_path / "outside.pt"
    shutil.copy(model / "model.pt", outside)
    (model / "model.pt").unlink()
    (model / "model.pt").symlink_to(outside)
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("unsafe-path", "model.pt")]
    assert result.failures[0].rule_id == "SH305"


def test_symlinked_folder_and_extra_link_are_refused(model: Path, key: KeyPair,
                                                     tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (model / "linked").symlink_to(tmp_path / "elsewhere")
    (model / "README.md").unlink()
    (model / "README.md").symlink_to("config.json")
    result = verify(model, public_key=key.public_path, ignore_unsigned_files=True)
    assert sorted(kinds(result)) == [("unsafe-path", "README.md"), ("unsafe-path", "linked")]


def test_fifo_is_refused_without_hanging(model: Path, key: KeyPair) -> None:
    os.mkfifo(model / "pipe")
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("unsafe-path", "pipe")]


# ("./model.pt" and "a//b" are other spellings of paths inside the model, read as
# model_signing reads them: see test_reference_parity.)
@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "a/../../x", "a/..",
                                  "a\\..\\b", "//etc/passwd"])
def test_forged_manifest_with_unsafe_path_is_refused_by_path_validation(
        model: Path, key: KeyPair, name: str) -> None:
    forged = {"name": name, "algorithm": "sha256", "digest": hashlib.sha256(b"x").hexdigest()}
    resources = [*file_resources(model), forged]
    write_forged(model, statement(resources), key.key)  # a valid signature by the trusted key
    with pytest.raises(SignatureInvalid) as info:
        load_signature(model / "model.sig", public_key=key.public_path)
    assert [f.kind for f in info.value.failures] == [FailureKind.UNSAFE_PATH]
    assert info.value.signer is not None, "the signature itself verified"
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("unsafe-path", None)]


def test_forged_manifest_signed_by_another_key(model: Path, key: KeyPair,
                                               tmp_path: Path) -> None:
    attacker = make_key(tmp_path, "attacker")
    (model / "model.pt").write_bytes(b"evil weights")
    # Correct digests, the trusted key's hint, but the attacker's signature.
    trusted_hint = json.loads((model / "model.sig").read_text())["verificationMaterial"][
        "publicKey"]["hint"]
    write_forged(model, statement(file_resources(model)), attacker.key, hint=trusted_hint)
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("signature-invalid", None)]


def test_payload_edited_after_signing(model: Path, key: KeyPair) -> None:
    doc = json.loads((model / "model.sig").read_text())
    import base64

    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    (model / "model.pt").write_bytes(b"evil")
    for res in payload["predicate"]["resources"]:
        if res["name"] == "model.pt":
            res["digest"] = hashlib.sha256(b"evil").hexdigest()
    digests = b"".join(bytes.fromhex(r["digest"]) for r in payload["predicate"]["resources"])
    payload["subject"][0]["digest"]["sha256"] = hashlib.sha256(digests).hexdigest()
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (model / "model.sig").write_text(json.dumps(doc))
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("signature-invalid", None)]


def test_hint_can_only_fail_a_signature(model: Path, key: KeyPair) -> None:
    # As model_signing: a stated hint that is not the trusted key's is a key mismatch,
    # even though the signature itself verifies; no hint leaves it to the signature.
    doc = json.loads((model / "model.sig").read_text())
    doc["verificationMaterial"]["publicKey"]["hint"] = "00" * 32
    (model / "model.sig").write_text(json.dumps(doc))
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("signature-invalid", None)]
    assert "key mismatch" in result.failures[0].message
    del doc["verificationMaterial"]["publicKey"]["hint"]
    (model / "model.sig").write_text(json.dumps(doc))
    assert verify(model, public_key=key.public_path).ok


def test_duplicate_json_keys_in_signed_statement_are_refused(model: Path, key: KeyPair) -> None:
    # Two "resources" keys: one parser would see the first list, another the last.
    good = json.dumps(statement(file_resources(model)))
    forged = good.replace('"resources":', '"resources": [], "resources":', 1).encode()
    write_forged(model, forged, key.key)
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("signature-invalid", None)]
    assert "duplicate key" in result.failures[0].message


def test_inconsistent_root_digest_is_refused(model: Path, key: KeyPair) -> None:
    write_forged(model, statement(file_resources(model), root="00" * 32), key.key)
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("signature-invalid", None)]


def test_wrong_predicate_type_is_refused(model: Path, key: KeyPair) -> None:
    stmt = statement(file_resources(model))
    stmt["predicateType"] = "https://example.com/other/v1"
    write_forged(model, stmt, key.key)
    result = verify(model, public_key=key.public_path)
    assert "predicate type" in result.failures[0].message


def test_legacy_pae_verifies_older_media_types_do_not(model: Path, key: KeyPair) -> None:
    payload = json.dumps(statement(file_resources(model))).encode()
    legacy = (f"DSSEV1 28 application/vnd.in-toto+json {len(payload)} {payload!r}").encode()
    write_forged(model, payload, key.key, signed_message=legacy)
    assert verify(model, public_key=key.public_path).ok
    # model_signing 1.1.1's key and certificate verifiers accept the v0.3 media type only.
    write_forged(model, payload, key.key, signed_message=legacy,
                 media_type="application/vnd.dev.sigstore.bundle+json;version=0.2")
    assert "media type" in verify(model, public_key=key.public_path).failures[0].message
    # ...but a signature over anything else is not accepted.
    write_forged(model, payload, key.key, signed_message=pae(payload + b" "))
    assert not verify(model, public_key=key.public_path).ok


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"mediaType": "x"}', b"\xff\xfe",
                                     b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3'
                                     b'+json", "verificationMaterial": {}, "dsseEnvelope": {}}'])
def test_malformed_bundle_is_not_verified(model: Path, key: KeyPair, content: bytes) -> None:
    (model / "model.sig").write_bytes(content)
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("signature-invalid", None)]


def test_git_entries_at_top_are_ignored_but_not_deeper(model: Path, key: KeyPair) -> None:
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (model / ".git" / "hooks.py").write_text("print('not importable from here')\n")
    (model / ".gitattributes").write_text("changed\n")
    (model / ".github").mkdir()
    (model / ".github" / "ci.yml").write_text("on: push\n")
    assert verify(model, public_key=key.public_path).ok
    (model / "tiny" / ".gitignore").write_text("*.pyc\n")
    result = verify(model, public_key=key.public_path)
    assert kinds(result) == [("unsigned-file", "tiny/.gitignore")]


def test_detached_signature(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    sig = sign(m, private_key=key.private_path, signature_path=tmp_path / "m.sig")
    assert not (m / "model.sig").exists()
    assert verify(m, signature=sig, public_key=key.public_path).ok
    with pytest.raises(SignatureMissing):
        verify(m, public_key=key.public_path)  # looks for m/model.sig


def test_signer_ignore_paths_skip_data_but_never_code(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    (m / "docs").mkdir()
    (m / "docs" / "notes.txt").write_text("v1")
    (m / "docs" / "helper.py").write_text("x = 1\n")
    with pytest.raises(SafehubError, match="code"):
        sign(m, private_key=key.private_path, ignore_paths=["docs"])
    (m / "docs" / "helper.py").unlink()
    sign(m, private_key=key.private_path, ignore_paths=["docs"])
    (m / "docs" / "notes.txt").write_text("v2, not signed")
    result = verify(m, public_key=key.public_path)
    assert result.ok and "docs/notes.txt" in result.skipped
    (m / "docs" / "helper.py").write_text("import os\n")
    result = verify(m, public_key=key.public_path)
    assert kinds(result) == [("unsigned-code", "docs/helper.py")]


def test_errors_are_not_verdicts(tmp_path: Path, key: KeyPair, model: Path) -> None:
    with pytest.raises(SafehubError, match="model path not found"):
        verify(tmp_path / "nope", public_key=key.public_path)
    with pytest.raises(SafehubError, match="public key file not found"):
        verify(model, public_key=tmp_path / "nope.pub")
    (tmp_path / "rsa.pub").write_text("not a key")
    with pytest.raises(SafehubError, match="unusable public key"):
        verify(model, public_key=tmp_path / "rsa.pub")
    with pytest.raises(SafehubError, match="exactly one"):
        verify(model)
    with pytest.raises(SignatureMissing):
        verify(model, signature=tmp_path / "none.sig", public_key=key.public_path)


def test_rsa_key_is_unusable(tmp_path: Path, model: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pub = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SafehubError, match="elliptic-curve"):
        TrustedKey.from_pem(pub)


def test_trust_values_from_pem_bytes(model: Path, key: KeyPair) -> None:
    trusted = TrustedKey.from_pem(key.public_pem, source="policy:[[signatures]]")
    signed = load_signature(model / "model.sig", trust=trusted)
    assert signed.signer.key_fingerprint == trusted.fingerprint
    assert signed.method == "files" and "model.pt" in signed.paths
    assert signed.resources["model.pt"].startswith("sha256:")
    assert signed.check(model).ok
