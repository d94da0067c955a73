"""Soundness of verification against rewritten signatures, and interop with the reference tool.

Every malformed bundle or certificate is a clean "not verified" naming the problem, in
``verify`` (API and CLI), in ``load`` (the hub runner's signature step) and per file in
``audit``: never a crash. Text from the bundle is escaped before it is shown. A signer's
absolute ignore path is never re-rooted into the model. And what the reference tool
(model_signing 1.1.1) accepts by design is accepted too: CAs without keyUsage (the
``openssl req -x509`` default) and model_signing 0.2's ``Digests/v0.1`` statements.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from safehub.errors import IntegrityError
from safehub.signing import sign, verify
from tests.conftest import CliResult
from tests.signing.helpers import (
    KeyPair,
    Pki,
    bundle,
    file_resources,
    make_cert,
    make_key,
    make_model,
    make_pki,
    pem,
    statement,
    write_forged,
)

Cli = Callable[..., CliResult]


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path, "trusted")


def kinds(result: Any) -> list[tuple[str, str | None]]:
    return [(f.kind.value, f.path) for f in result.failures]


# --- absolute ignore paths -------------------------------------------------------------------


def test_absolute_ignore_path_is_never_rerooted(tmp_path: Path, key: KeyPair) -> None:
    m = make_model(tmp_path / "m")
    ser = {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
           "ignore_paths": ["/srv/models/m/notes.txt", str(m / "inside.txt"), "/"]}
    write_forged(m, statement(file_resources(m), serialization=ser), key.key)
    # Unsigned files at the re-rooted spelling of the signer's path, and inside the model.
    (m / "srv" / "models" / "m").mkdir(parents=True)
    (m / "srv" / "models" / "m" / "notes.txt").write_text("unsigned\n")
    (m / "inside.txt").write_text("ignored: the absolute path resolves inside the model\n")
    result = verify(m, public_key=key.public_path)
    assert kinds(result) == [("unsigned-file", "srv/models/m/notes.txt")]
    assert "inside.txt" in result.skipped


def test_absolute_ignore_path_matches_the_reference_tool(tmp_path: Path, key: KeyPair) -> None:
    model_signing = pytest.importorskip("model_signing")
    m = make_model(tmp_path / "m")
    ser = {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
           "ignore_paths": ["/srv/models/m/notes.txt"]}
    sig = write_forged(m, statement(file_resources(m), serialization=ser), key.key)
    (m / "srv" / "models" / "m").mkdir(parents=True)
    (m / "srv" / "models" / "m" / "notes.txt").write_text("unsigned\n")
    with pytest.raises(ValueError):  # the reference tool refuses the extra file too
        model_signing.verifying.Config().use_elliptic_key_verifier(
            public_key=key.public_path).verify(m, sig)
    assert not verify(m, public_key=key.public_path).ok


# --- malformed bundles and certificates --------------------------------------------------------


def _der_swap(cert: x509.Certificate, old: bytes, new: bytes) -> x509.Certificate:
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(old) >= 1
    return x509.load_der_x509_certificate(der.replace(old, new, 1))


EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
P256 = bytes.fromhex("06082a8648ce3d030107")  # prime256v1
SKI = bytes.fromhex("0603551d0e")  # subjectKeyIdentifier
KEY_USAGE = bytes.fromhex("0603551d0f")


def _forged_leaf(pki: Pki, how: str) -> x509.Certificate:
    leaf = pki.leaf
    if how == "unknown key algorithm":
        return _der_swap(leaf, EC_PUBLIC_KEY, bytes.fromhex("06072a8648ce3d0209"))
    if how == "unsupported curve":
        return _der_swap(leaf, P256, bytes.fromhex("06082a8648ce3d030109"))
    if how == "duplicate keyUsage":
        return _der_swap(leaf, SKI, KEY_USAGE)
    raise AssertionError(how)


def _bundle_variants(m: Path, key: KeyPair, pki: Pki) -> dict[str, tuple[bytes, str]]:
    """name -> (model.sig bytes, 'key' or 'cert': what to verify with)."""
    payload = json.dumps(statement(file_resources(m))).encode()
    good = json.loads(bundle(payload, key.key))
    huge = dict(good, extra=0)
    huge_text = json.dumps(huge).replace('"extra": 0', '"extra": 1' + "0" * 5000)
    out = {"5000-digit number": (huge_text.encode(), "key")}
    for name, hint in (("lone surrogate in the hint", "\\ud800abc"),
                       ("CR and ESC in the hint", "\\r\\u001b[2KSAFEHUB-VERIFIED\\u202e")):
        other = make_key(m.parent, "other")
        doc = json.loads(bundle(payload, other.key))
        doc["verificationMaterial"]["publicKey"]["hint"] = "HINT"
        out[name] = (json.dumps(doc).replace('"HINT"', f'"{hint}"').encode(), "key")
    for how in ("unknown key algorithm", "unsupported curve", "duplicate keyUsage"):
        out[how] = (bundle(payload, pki.leaf_key.key,
                           certificates=[_forged_leaf(pki, how), pki.intermediate]), "cert")
    out["5000-digit number in the signed statement"] = (
        bundle(json.dumps(statement(file_resources(m))).replace(
            '"allow_symlinks": false', '"allow_symlinks": false, "n": 1' + "0" * 5000)
            .encode(), key.key), "key")
    return out


CASES = ["5000-digit number", "lone surrogate in the hint", "CR and ESC in the hint",
         "unknown key algorithm", "unsupported curve", "duplicate keyUsage",
         "5000-digit number in the signed statement"]


@pytest.fixture
def forged(tmp_path: Path, key: KeyPair) -> tuple[Path, Pki, dict[str, tuple[bytes, str]]]:
    m = make_model(tmp_path / "m")
    pki = make_pki(tmp_path / "pki")
    return m, pki, _bundle_variants(m, key, pki)


def _anchor(kind: str, key: KeyPair, pki: Pki) -> dict[str, Any]:
    return {"public_key": key.public_path} if kind == "key" else \
        {"certificate_chain": pki.root_path}


@pytest.mark.parametrize("case", CASES)
def test_malformed_is_not_verified_through_the_api(forged: Any, key: KeyPair, case: str) -> None:
    m, pki, variants = forged
    data, kind = variants[case]
    (m / "model.sig").write_bytes(data)
    result = verify(m, **_anchor(kind, key, pki))
    assert not result.ok and result.signer is None
    assert result.failures[0].kind.value in ("signature-invalid", "certificate-invalid")
    message = result.failures[0].message
    assert message.isprintable() and message.isascii(), message


@pytest.mark.parametrize("case", CASES)
def test_malformed_is_exit_1_in_the_cli(cli: Cli, forged: Any, key: KeyPair, case: str) -> None:
    m, pki, variants = forged
    data, kind = variants[case]
    (m / "model.sig").write_bytes(data)
    flag = ["--key", str(key.public_path)] if kind == "key" else \
        ["--certificate-chain", str(pki.root_path)]
    for fmt in ("text", "json"):
        res = cli("verify", str(m), *flag, "-f", fmt)
        assert res.code == 1, (res.out, res.err)
        assert "Traceback" not in res.err and "internal error" not in res.err
        for text in (res.out, res.err):
            assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
            assert "SAFEHUB-VERIFIED" not in text.replace("[2KSAFEHUB-VERIFIED", "")
    if case == "CR and ESC in the hint":
        assert "\\x0d\\x1b[2KSAFEHUB-VERIFIED\\u202e" in res.err


@pytest.mark.parametrize("case", CASES)
def test_malformed_is_refused_by_the_load_path(forged: Any, key: KeyPair, case: str,
                                               tmp_path: Path) -> None:
    from safehub._hub.runner import verify_signatures
    from safehub.policy import RepoRequest, load_policy

    m, pki, variants = forged
    data, kind = variants[case]
    (m / "model.sig").write_bytes(data)
    anchor = key.public_path if kind == "key" else pki.root_path
    field = "public_keys" if kind == "key" else "certificate_chains"
    policy = tmp_path / "p.toml"
    policy.write_text(f'schema = 1\nextends = "default"\n[[signatures]]\n'
                      f'scope = "path:{m}"\n{field} = ["{anchor}"]\n')
    decision = load_policy(policy).decide(RepoRequest(str(m), source="local"))
    with pytest.raises(IntegrityError) as exc:
        verify_signatures(decision, m, str(m))
    assert "\x1b" not in str(exc.value.fix) and "\r" not in str(exc.value.fix)


def _folder(case: str) -> str:
    return "model-" + hashlib.sha256(case.encode()).hexdigest()[:8]


def test_malformed_is_a_finding_per_folder_in_audit(cli: Cli, forged: Any, key: KeyPair,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    m, _, variants = forged
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    # A checkout-looking folder beside an ancestor (pytest's own tmp folders can hold one)
    # must not make that ancestor a torch.hub directory enclosing the audited folders.
    (tmp_path / "acme_model_main").mkdir()
    (tmp_path / "acme_model_main" / "hubconf.py").write_text("")
    root = tmp_path / "store"
    keyed = [c for c in CASES if variants[c][1] == "key"]
    for case in keyed:
        copy = root / _folder(case)
        shutil.copytree(m, copy)
        (copy / "model.sig").write_bytes(variants[case][0])
        # random bytes would be "not scanned" (exit 2); a clean pickle keeps it a model
        (copy / "model.pt").write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    policy = tmp_path / "p.toml"
    policy.write_text(f'schema = 1\nextends = "default"\n[[signatures]]\n'
                      f'scope = "path:{root}/*"\npublic_keys = ["{key.public_path}"]\n')
    folders = [str(root / _folder(case)) for case in keyed]  # each named folder: one unit
    res = cli("audit", *folders, "--policy", str(policy), "--no-state", "-f", "json")
    assert res.code == 1, res.err
    data = json.loads(res.out)
    failing = {Path(f["path"]).name for f in data["files"]
               if any(x["rule_id"].startswith("SH3") for x in f["findings"])}
    assert failing == {_folder(c) for c in keyed}, data["files"]


# --- interop: openssl-made roots, legacy statements -------------------------------------------


def _root_without_key_usage(tmp_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if shutil.which("openssl"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "ca.key"),
                        "-out", str(tmp_path / "ca.pem"), "-subj", "/CN=openssl root",
                        "-days", "30"], check=True, capture_output=True, timeout=60)
        ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = make_cert(ca_key, "openssl root", ca=True, key_usage=False)
    with pytest.raises(x509.ExtensionNotFound):
        ca.extensions.get_extension_for_class(x509.KeyUsage)
    return ca, ca_key


def test_root_without_key_usage_is_accepted_like_the_reference(tmp_path: Path) -> None:
    model_signing = pytest.importorskip("model_signing")
    pytest.importorskip("OpenSSL")
    ca, ca_key = _root_without_key_usage(tmp_path)
    (tmp_path / "root.pem").write_bytes(pem(ca))
    signer = make_key(tmp_path, "signer")
    # The reference tool checks the chain at the leaf's notBefore: not before the root's.
    leaf = make_cert(signer.key, "signer", issuer_key=ca_key, issuer_cert=ca,
                     eku=[ExtendedKeyUsageOID.CODE_SIGNING], not_before=ca.not_valid_before_utc)
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    m = make_model(tmp_path / "m")
    sig = sign(m, private_key=signer.private_path, certificate_chain=[tmp_path / "leaf.pem"])
    model_signing.verifying.Config().use_certificate_verifier(
        certificate_chain=[tmp_path / "root.pem"]).verify(m, sig)
    assert verify(m, certificate_chain=tmp_path / "root.pem").ok
    (m / "model.pt").write_bytes(b"tampered")
    assert not verify(m, certificate_chain=tmp_path / "root.pem").ok


def test_ca_key_usage_without_cert_sign_is_refused(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    builder_ca = make_cert(ca_key, "tls-only root", ca=True, key_usage=False)
    from cryptography.hazmat.primitives import hashes

    ku = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                       crl_sign=False, encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(builder_ca.subject)
          .issuer_name(builder_ca.subject).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(builder_ca.not_valid_before_utc)
          .not_valid_after(builder_ca.not_valid_after_utc)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(ku, critical=True)
          .sign(ca_key, hashes.SHA256()))
    (tmp_path / "root.pem").write_bytes(pem(ca))
    signer = make_key(tmp_path, "signer")
    leaf = make_cert(signer.key, "signer", issuer_key=ca_key, issuer_cert=ca,
                     eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    m = make_model(tmp_path / "m")
    sign(m, private_key=signer.private_path, certificate_chain=[tmp_path / "leaf.pem"])
    result = verify(m, certificate_chain=tmp_path / "root.pem")
    assert kinds(result) == [("certificate-invalid", None)]


def _legacy_statement(m: Path) -> dict[str, Any]:
    subjects = [{"name": r["name"], "digest": {"sha256": r["digest"]}}
                for r in file_resources(m)]
    return {"_type": "https://in-toto.io/Statement/v1", "subject": subjects,
            "predicateType": "https://model_signing/Digests/v0.1", "predicate": {"unused": ""}}


def test_legacy_digests_statement_verifies_like_the_reference(tmp_path: Path,
                                                               key: KeyPair) -> None:
    model_signing = pytest.importorskip("model_signing")
    m = make_model(tmp_path / "m")
    sig = tmp_path / "m.sig"  # detached: a 0.2 statement records no ignore paths
    sig.write_bytes(bundle(json.dumps(_legacy_statement(m)).encode(), key.key))
    model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=key.public_path).verify(m, sig)
    result = verify(m, signature=sig, public_key=key.public_path)
    assert result.ok, result.failures
    assert set(result.files) == {r["name"] for r in file_resources(m)}
    (m / "config.json").write_text('{"in": 999}\n')
    with pytest.raises(ValueError):
        model_signing.verifying.Config().use_elliptic_key_verifier(
            public_key=key.public_path).verify(m, sig)
    assert kinds(verify(m, signature=sig, public_key=key.public_path)) == [
        ("digest-mismatch", "config.json")]
    (m / "config.json").write_text('{"in": 4, "out": 2}\n')
    (m / "extra.py").write_text("import os\n")
    assert kinds(verify(m, signature=sig, public_key=key.public_path)) == [
        ("unsigned-code", "extra.py")]


# (An empty subject list verifies an empty model, as in the reference: test_reference_parity.)
@pytest.mark.parametrize("subjects", [
    [{"name": "../x", "digest": {"sha256": "00" * 32}}],
    [{"name": "a", "digest": {"sha256": "00" * 31}}],
    [{"name": "a", "digest": {"sha256": "00" * 32}},
     {"name": "a", "digest": {"sha256": "11" * 32}}],
])
def test_malformed_legacy_statements_are_not_verified(tmp_path: Path, key: KeyPair,
                                                      subjects: list[Any]) -> None:
    m = make_model(tmp_path / "m")
    stmt = {**_legacy_statement(m), "subject": subjects}
    write_forged(m, stmt, key.key)
    result = verify(m, public_key=key.public_path)
    assert not result.ok and result.signer is None


def test_display_escapes_everything_that_could_forge_a_line() -> None:
    from safehub._signing.certs import display

    text = display("a\rb\x1bc\u202ed\u2028e\ud800f\x7f")
    assert text.isascii() and text.isprintable()
    assert hashlib.sha256(text.encode()).hexdigest()  # encodable: no lone surrogate left
