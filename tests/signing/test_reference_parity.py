"""safehub verifies what model_signing 1.1.1 verifies, and refuses what it refuses.

Each case builds a real model folder and a real bundle (signed with a fresh key or a
fresh CA), asserts safehub's verdict, and, where the reference tool is installed (a
dev dependency), asserts that model_signing's own verifier reaches the same verdict on
the same files: the reference is the oracle, not a description of it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from safehub.signing import Verification, verify
from tests.signing.helpers import (
    DAY,
    NOW,
    KeyPair,
    file_resources,
    make_key,
    make_model,
    make_pki,
    pae,
    pem,
    statement,
    write_forged,
)


def reference(model: Path, sig: Path, *, public_key: Path | None = None,
              certificate_chain: Path | None = None, ignore_unsigned_files: bool = False,
              ignore_git_paths: bool = True) -> bool | None:
    """model_signing's verdict (None when it is not installed), with the hashing
    configuration the signature names (its API cannot rebuild a sharded or BLAKE2 one
    from the statement alone) and the signature file ignored, as its CLI does."""
    try:
        import model_signing
    except ImportError:
        return None
    config = model_signing.verifying.Config()
    if public_key is not None:
        config.use_elliptic_key_verifier(public_key=public_key)
    else:
        config.use_certificate_verifier(certificate_chain=[certificate_chain])
    config.set_ignore_unsigned_files(ignore_unsigned_files)
    try:
        doc = json.loads(sig.read_text())
        ser = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))[
            "predicate"]["serialization"]
        algorithm = {"blake2b": "blake2"}.get(ser["hash_type"], ser["hash_type"])
        hashing = model_signing.hashing.Config()
        if ser["method"] == "shards":
            hashing.use_shard_serialization(hashing_algorithm=algorithm,
                                            shard_size=int(ser["shard_size"]))
        else:
            hashing.use_file_serialization(hashing_algorithm=algorithm)
        hashing.set_ignored_paths(paths=[sig] if sig.parent == model else [],
                                  ignore_git_paths=ignore_git_paths)
        config.set_hashing_config(hashing)
    except (ValueError, KeyError, TypeError):
        pass  # a malformed bundle: let the reference's own reading refuse it
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            config.verify(model, sig)
    except Exception:  # the reference signals every refusal with some exception
        return False
    return True


def check(expect_ok: bool, model: Path, sig: Path, **trust: Any) -> Verification:
    """safehub's verdict is ``expect_ok``, and so is the reference tool's."""
    result = verify(model, signature=sig, **trust)
    assert result.ok is expect_ok, result.failures
    verdict = reference(model, sig, **trust)
    assert verdict in (None, expect_ok), f"model_signing says {verdict}"
    return result


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path, "signer")


def _signed(tmp_path: Path, key: KeyPair) -> tuple[Path, Path, dict[str, Any]]:
    """A model, its detached signature (written by safehub's signer), and the bundle."""
    from safehub.signing import sign

    model = make_model(tmp_path / "model")
    sig = sign(model, private_key=key.private_path, signature_path=tmp_path / "model.sig")
    return model, sig, json.loads(sig.read_text())


def _rewrite(sig: Path, doc: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(json.dumps(doc))
    change(doc)
    sig.write_text(json.dumps(doc))


def _sig_b64(key: KeyPair, message: bytes) -> str:
    return base64.b64encode(key.key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()


# --- the bundle ------------------------------------------------------------------------

def test_a_stated_key_hint_must_be_the_trusted_keys(tmp_path: Path, key: KeyPair) -> None:
    model, sig, doc = _signed(tmp_path, key)
    check(True, model, sig, public_key=key.public_path)
    for hint in ("00" * 32, doc["verificationMaterial"]["publicKey"]["hint"].upper()):
        _rewrite(sig, doc, lambda d, h=hint: d["verificationMaterial"]["publicKey"].update(
            hint=h))
        result = check(False, model, sig, public_key=key.public_path)
        assert "key mismatch" in result.failures[0].message
    for empty in ("", None):
        _rewrite(sig, doc, lambda d, h=empty: d["verificationMaterial"]["publicKey"].update(
            hint=h))
        check(True, model, sig, public_key=key.public_path)


def test_only_the_first_envelope_signature_counts(tmp_path: Path, key: KeyPair) -> None:
    model, sig, doc = _signed(tmp_path, key)
    other = make_key(tmp_path, "other")
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"])
    foreign = {"sig": _sig_b64(other, pae(payload)), "keyid": ""}
    _rewrite(sig, doc, lambda d: d["dsseEnvelope"]["signatures"].insert(0, foreign))
    check(False, model, sig, public_key=key.public_path)
    _rewrite(sig, doc, lambda d: d["dsseEnvelope"]["signatures"].append(foreign))
    check(True, model, sig, public_key=key.public_path)


@pytest.mark.parametrize("change", [
    pytest.param(lambda d: d.update(mediaType="application/vnd.dev.sigstore.bundle+json;"
                                              "version=0.3"), id="older-media-type"),
    pytest.param(lambda d: d.update(extra=1), id="unknown-top-level-field"),
    pytest.param(lambda d: d["dsseEnvelope"].update(extra=1), id="unknown-envelope-field"),
    pytest.param(lambda d: d["dsseEnvelope"]["signatures"][0].update(keyid=5),
                 id="keyid-not-a-string"),
    pytest.param(lambda d: d["verificationMaterial"].update(tlogEntries=[{"logIndex": "1"}]),
                 id="junk-tlog-entry"),
    pytest.param(lambda d: d["dsseEnvelope"].update(
        payload=d["dsseEnvelope"]["payload"].rstrip("=")), id="payload-without-padding"),
    pytest.param(lambda d: d["dsseEnvelope"]["signatures"][0].update(
        sig=d["dsseEnvelope"]["signatures"][0]["sig"].replace("+", "-").replace("/", "_")),
        id="url-safe-alphabet"),
])
def test_bundles_the_reference_refuses(tmp_path: Path, key: KeyPair,
                                       change: Callable[[dict[str, Any]], None]) -> None:
    model, sig, doc = _signed(tmp_path, key)
    _rewrite(sig, doc, change)
    if json.loads(sig.read_text()) == doc:
        pytest.skip("this signature has no character the URL-safe alphabet changes")
    check(False, model, sig, public_key=key.public_path)


def test_key_trust_needs_a_public_key_bundle(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    model = make_model(tmp_path / "model")
    sig = write_forged(model, statement(file_resources(model)), pki.leaf_key.key,
                       certificates=[pki.leaf, pki.intermediate])
    check(True, model, sig, certificate_chain=pki.root_path)
    # The certificate's key made the signature, but a key-method verifier reads a key hint.
    check(False, model, sig, public_key=pki.leaf_key.public_path)
    # A lone `certificate` (not x509CertificateChain) is not what the certificate method reads.
    doc = json.loads(sig.read_text())
    material = doc["verificationMaterial"]
    material["certificate"] = material.pop("x509CertificateChain")["certificates"][0]
    sig.write_text(json.dumps(doc))
    both = tmp_path / "root_and_intermediate.pem"
    both.write_bytes(pki.root_path.read_bytes() + pki.chain_path.read_bytes())
    check(False, model, sig, certificate_chain=both)


def test_whitespace_in_base64_decodes_as_the_reference_reads_it(tmp_path: Path,
                                                                 key: KeyPair) -> None:
    model, sig, doc = _signed(tmp_path, key)
    text = doc["dsseEnvelope"]["signatures"][0]["sig"]
    _rewrite(sig, doc, lambda d: d["dsseEnvelope"]["signatures"][0].update(
        sig=text[:8] + "\n" + text[8:]))
    check(True, model, sig, public_key=key.public_path)


def test_reference_signed_model_still_verifies(tmp_path: Path, key: KeyPair) -> None:
    model_signing = pytest.importorskip("model_signing")
    model = make_model(tmp_path / "model")
    sig = tmp_path / "model.sig"
    model_signing.signing.Config().use_elliptic_key_signer(
        private_key=key.private_path).sign(model, sig)
    check(True, model, sig, public_key=key.public_path)
    (model / "model.pt").write_bytes(os.urandom(10))
    check(False, model, sig, public_key=key.public_path)


# --- the signed statement --------------------------------------------------------------

def _files(hash_type: str = "sha256", **extra: Any) -> dict[str, Any]:
    return {"method": "files", "hash_type": hash_type, "allow_symlinks": False,
            "ignore_paths": [".git", ".gitattributes", ".github", ".gitignore"], **extra}


def _shard_resources(model: Path, size: int, algorithm: str) -> list[dict[str, str]]:
    import hashlib

    out = []
    for res in file_resources(model):
        data = (model / res["name"]).read_bytes()
        for start in range(0, len(data), size):
            out.append({"name": f"{res['name']}:{start}:{min(start + size, len(data))}",
                        "algorithm": algorithm,
                        "digest": hashlib.sha256(data[start:start + size]).hexdigest()})
    return out


def test_root_digest_is_compared_as_written(tmp_path: Path, key: KeyPair) -> None:
    model = make_model(tmp_path / "model")
    stmt = statement(file_resources(model), serialization=_files())
    sig = write_forged(model, stmt, key.key)
    check(True, model, sig, public_key=key.public_path)
    stmt["subject"][0]["digest"]["sha256"] = stmt["subject"][0]["digest"]["sha256"].upper()
    write_forged(model, stmt, key.key)
    check(False, model, sig, public_key=key.public_path)


def test_allow_symlinks_must_be_stated(tmp_path: Path, key: KeyPair) -> None:
    model = make_model(tmp_path / "model")
    ser = _files()
    del ser["allow_symlinks"]
    sig = write_forged(model, statement(file_resources(model), serialization=ser), key.key)
    check(False, model, sig, public_key=key.public_path)


@pytest.mark.parametrize("hash_type,algorithm", [("blake2b", "blake2"), ("sha256", "SHA256")])
def test_resource_algorithm_is_the_hashers_own_name(tmp_path: Path, key: KeyPair,
                                                    hash_type: str, algorithm: str) -> None:
    import hashlib

    model = make_model(tmp_path / "model")
    resources = file_resources(model)
    for res in resources:
        data = (model / res["name"]).read_bytes()
        res["algorithm"] = algorithm
        res["digest"] = (hashlib.blake2b(data) if hash_type == "blake2b"
                         else hashlib.sha256(data)).hexdigest()
    sig = write_forged(model, statement(resources, serialization=_files(hash_type)), key.key)
    check(False, model, sig, public_key=key.public_path)
    for res in resources:
        res["algorithm"] = hash_type
    write_forged(model, statement(resources, serialization=_files(hash_type)), key.key)
    check(True, model, sig, public_key=key.public_path)


def test_shard_algorithm_and_names_as_the_reference_spells_them(tmp_path: Path,
                                                                 key: KeyPair) -> None:
    model = make_model(tmp_path / "model", weights=os.urandom(2500))
    ser = {**_files(), "method": "shards", "shard_size": 1000.0}
    good = _shard_resources(model, 1000, "sha256-sharded-1000")
    sig = write_forged(model, statement(good, serialization=ser), key.key)
    check(True, model, sig, public_key=key.public_path)
    # "1000.0" is how the size is stored, never how the reference names the algorithm.
    write_forged(model, statement(_shard_resources(model, 1000, "sha256-sharded-1000.0"),
                                  serialization=ser), key.key)
    check(False, model, sig, public_key=key.public_path)
    # A file name holding a colon cannot be named in a shard manifest.
    (model / "a:b.bin").write_bytes(b"x" * 10)
    write_forged(model, statement(_shard_resources(model, 1000, "sha256-sharded-1000"),
                                  serialization=ser), key.key)
    check(False, model, sig, public_key=key.public_path)


def test_resource_names_are_read_as_posix_paths(tmp_path: Path, key: KeyPair) -> None:
    model = make_model(tmp_path / "model")
    for respell in (lambda n: f"./{n}", lambda n: f"{n}/", lambda n: n.replace("/", "/./"),
                    lambda n: n.replace("/", "//")):
        resources = file_resources(model)
        for res in resources:
            res["name"] = respell(res["name"])
        sig = write_forged(model, statement(resources, serialization=_files()), key.key)
        result = check(True, model, sig, public_key=key.public_path)
        assert "tiny/__init__.py" in result.files


# --- certificate chains ----------------------------------------------------------------

def _leaf(pki: Any, *, ku: dict[str, bool] | None = None,
          eku: list[x509.ObjectIdentifier] | None = None,
          not_before: Any = None) -> x509.Certificate:
    """A signing certificate for pki's leaf key, issued by its intermediate."""
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")]))
               .issuer_name(pki.intermediate.subject).public_key(pki.leaf_key.key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - DAY).not_valid_after(NOW + 30 * DAY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if ku is not None:
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                               "data_encipherment", "key_agreement", "key_cert_sign",
                               "crl_sign", "encipher_only", "decipher_only"), False)
        builder = builder.add_extension(x509.KeyUsage(**{**flags, **ku}), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(pki.intermediate_key, hashes.SHA256())


def _cert_signed(tmp_path: Path, pki: Any, leaf: x509.Certificate,
                 *rest: x509.Certificate) -> tuple[Path, Path]:
    model = make_model(tmp_path / "model")
    sig = write_forged(model, statement(file_resources(model), serialization=_files()),
                       pki.leaf_key.key, certificates=[leaf, *(rest or (pki.intermediate,))])
    return model, sig


def test_the_path_must_end_at_a_trusted_self_signed_root(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    model, sig = _cert_signed(tmp_path, pki, pki.leaf)
    check(True, model, sig, certificate_chain=pki.root_path)
    for name, certs in (("intermediate", (pki.intermediate,)), ("leaf", (pki.leaf,))):
        anchor = tmp_path / f"{name}.pem"
        anchor.write_bytes(pem(*certs))
        check(False, model, sig, certificate_chain=anchor)


def test_the_chain_is_also_valid_at_the_leafs_not_before(tmp_path: Path) -> None:
    # The leaf claims to predate its issuer: valid now, but not when model_signing looks.
    pki = make_pki(tmp_path / "pki")
    leaf = _leaf(pki, ku={"digital_signature": True}, not_before=NOW - 40 * DAY)
    model, sig = _cert_signed(tmp_path, pki, leaf)
    result = check(False, model, sig, certificate_chain=pki.root_path)
    assert "notBefore" in result.failures[0].message


@pytest.mark.parametrize("ku,eku,ok", [
    pytest.param(None, [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], False, id="anyEKU-alone"),
    pytest.param({"content_commitment": True}, None, False, id="no-digitalSignature"),
    pytest.param({"digital_signature": True}, None, True, id="digitalSignature"),
    pytest.param(None, [ExtendedKeyUsageOID.CODE_SIGNING], True, id="codeSigning"),
])
def test_the_leaf_must_allow_signing_as_the_reference_reads_it(
        tmp_path: Path, ku: dict[str, bool] | None, eku: list[x509.ObjectIdentifier] | None,
        ok: bool) -> None:
    pki = make_pki(tmp_path / "pki")
    model, sig = _cert_signed(tmp_path, pki, _leaf(pki, ku=ku, eku=eku))
    check(ok, model, sig, certificate_chain=pki.root_path)


def test_ca_with_non_critical_basic_constraints(tmp_path: Path) -> None:
    # What many openssl configurations write ("basicConstraints = CA:true"): OpenSSL and
    # so the reference accept it, and a CA:FALSE one is still refused.
    pki = make_pki(tmp_path / "pki")
    for ca, ok in ((True, True), (False, False)):
        key = ec.generate_private_key(ec.SECP256R1())
        inter = (x509.CertificateBuilder()
                 .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "int")]))
                 .issuer_name(pki.root.subject).public_key(key.public_key())
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(NOW - 10 * DAY).not_valid_after(NOW + 30 * DAY)
                 .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                critical=False)
                 .sign(pki.root_key, hashes.SHA256()))
        pki.intermediate, pki.intermediate_key = inter, key
        leaf = _leaf(pki, ku={"digital_signature": True})
        model, sig = _cert_signed(tmp_path / str(ca), pki, leaf, inter)
        check(ok, model, sig, certificate_chain=pki.root_path)


# --- the model on disk -----------------------------------------------------------------

@pytest.mark.parametrize("plant", [
    pytest.param(lambda m: os.symlink("/etc/passwd", m / ".git" / "evil"), id="link-in-.git"),
    pytest.param(lambda m: os.symlink("../../model.pt", m / ".git" / "objects" / "x"),
                 id="link-deep-in-.git"),
    pytest.param(lambda m: os.mkfifo(m / ".git" / "fifo"), id="fifo-in-.git"),
    pytest.param(lambda m: os.symlink("/etc/passwd", m / ".gitignore"), id=".gitignore-link"),
    pytest.param(lambda m: os.symlink(".git", m / ".github"), id=".github-link"),
])
def test_links_and_special_files_in_ignored_git_entries(tmp_path: Path, key: KeyPair,
                                                        plant: Callable[[Path], None]) -> None:
    from safehub.errors import SafehubError
    from safehub.signing import sign

    model = make_model(tmp_path / "model")
    (model / ".git" / "objects").mkdir(parents=True)
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    sig = sign(model, private_key=key.private_path, signature_path=tmp_path / "model.sig")
    (model / ".git" / "HEAD").write_text("changed: git files are not signed\n")
    check(True, model, sig, public_key=key.public_path)
    # model_signing checks every entry (a link, a FIFO) before asking if it is ignored.
    plant(model)
    result = check(False, model, sig, public_key=key.public_path)
    assert [f.kind.value for f in result.failures] == ["unsafe-path"]
    with pytest.raises(SafehubError, match="refusing to sign"):
        sign(model, private_key=key.private_path, signature_path=tmp_path / "again.sig")


def test_a_signed_file_under_an_ignore_path_is_missing(tmp_path: Path, key: KeyPair) -> None:
    model = make_model(tmp_path / "model")
    for ignore, ok in ((["./README.md/"], True), (["config.json"], False), (["."], False),
                       ([""], False)):
        resources = [r for r in file_resources(model)
                     if not (ok and r["name"] == "README.md")]
        sig = write_forged(model, statement(resources, serialization=_files(
            ignore_paths=[".git", *ignore])), key.key)
        result = check(ok, model, sig, public_key=key.public_path)
        if not ok:
            assert {f.kind.value for f in result.failures} == {"missing-file"}
    # The caller's ignore paths act the same way.
    sig = write_forged(model, statement(file_resources(model), serialization=_files()), key.key)
    result = verify(model, public_key=key.public_path, ignore_paths=["config.json"])
    assert [(f.kind.value, f.path) for f in result.failures] == [("missing-file",
                                                                  "config.json")]


def test_a_model_path_that_is_itself_a_link(tmp_path: Path, key: KeyPair) -> None:
    from safehub.signing import sign

    model = make_model(tmp_path / "model")
    sig = sign(model, private_key=key.private_path, signature_path=tmp_path / "model.sig")
    (tmp_path / "link").symlink_to(model)
    check(True, model, sig, public_key=key.public_path)
    check(False, tmp_path / "link", sig, public_key=key.public_path)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(100))
    single = sign(weights, private_key=key.private_path)
    (tmp_path / "weights.lnk").symlink_to(weights)
    check(False, tmp_path / "weights.lnk", single, public_key=key.public_path)
    # A caller that opened the file itself (a Hugging Face snapshot link) decides.
    with weights.open("rb") as fh:
        assert verify(tmp_path / "weights.lnk", signature=single, public_key=key.public_path,
                      open_files={".": fh}).ok


def test_a_repeated_resource(tmp_path: Path, key: KeyPair) -> None:
    # The reference keeps one entry per path: the same digest twice (or under another
    # spelling of the path) verifies there and here; two digests for one path are
    # ambiguous and refused here (the reference silently keeps the last one).
    model = make_model(tmp_path / "model")
    resources = file_resources(model)
    again = next(dict(r) for r in resources if r["name"] == "model.pt")
    sig = write_forged(model, statement([*resources, again], serialization=_files()), key.key)
    check(True, model, sig, public_key=key.public_path)
    write_forged(model, statement([*resources, dict(again, name="./model.pt")],
                                  serialization=_files()), key.key)
    check(True, model, sig, public_key=key.public_path)
    write_forged(model, statement([*resources, dict(again, digest="00" * 32)],
                                  serialization=_files()), key.key)
    result = verify(model, signature=sig, public_key=key.public_path)
    assert "different digests" in result.failures[0].message


def test_legacy_digests_statements_read_as_the_reference_reads_them(tmp_path: Path,
                                                                    key: KeyPair) -> None:
    def legacy(model: Path, subjects: list[dict[str, Any]]) -> Path:
        write_forged(model, {"_type": "https://in-toto.io/Statement/v1", "subject": subjects,
                             "predicateType": "https://model_signing/Digests/v0.1",
                             "predicate": {}}, key.key)
        sig = model.parent / f"{model.name}.sig"  # no ignore_paths to name it in
        os.replace(model / "model.sig", sig)
        return sig

    model = make_model(tmp_path / "model")
    subjects = [{"name": r["name"], "digest": {"sha256": r["digest"]}}
                for r in file_resources(model)]
    check(True, model, legacy(model, [*subjects, subjects[0]]), public_key=key.public_path)
    check(True, model, legacy(model, [dict(s, name=f"./{s['name']}") for s in subjects]),
          public_key=key.public_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    check(True, empty, legacy(empty, []), public_key=key.public_path)
    (empty / "weights.bin").write_bytes(b"unsigned")
    check(False, empty, legacy(empty, []), public_key=key.public_path)


def test_git_paths_can_be_signed_and_checked(tmp_path: Path, key: KeyPair, cli: Any) -> None:
    from safehub.signing import sign

    model = make_model(tmp_path / "model")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    sig = tmp_path / "model.sig"
    try:
        import model_signing
    except ImportError:
        sign(model, private_key=key.private_path, signature_path=sig, ignore_git_paths=False)
    else:  # signed by the reference itself, as `model_signing sign --no-ignore-git-paths`
        (model_signing.signing.Config().use_elliptic_key_signer(private_key=key.private_path)
         .set_hashing_config(model_signing.hashing.Config().set_ignored_paths(
             paths=[], ignore_git_paths=False)).sign(model, sig))
    check(False, model, sig, public_key=key.public_path)  # .git* skipped: missing
    result = check(True, model, sig, public_key=key.public_path, ignore_git_paths=False)
    assert {".gitattributes", ".git/HEAD"} <= set(result.files)
    (model / ".git" / "HEAD").write_text("tampered\n")
    check(False, model, sig, public_key=key.public_path, ignore_git_paths=False)
    # safehub's signer writes the same kind of signature.
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    own = sign(model, private_key=key.private_path, signature_path=tmp_path / "own.sig",
               ignore_git_paths=False)
    check(True, model, own, public_key=key.public_path, ignore_git_paths=False)
    assert cli("verify", model, "--signature", own, "--key", key.public_path).code == 1
    assert cli("sign", model, "--key", key.private_path, "--signature", tmp_path / "cli.sig",
               "--no-ignore-git-paths").code == 0
    assert cli("verify", model, "--signature", tmp_path / "cli.sig", "--key", key.public_path,
               "--no-ignore-git-paths").code == 0


# --- many rewritten bundles at once ----------------------------------------------------

_VALUES: list[Any] = [None, 0, 1, "", "x", [], {}, True, "AAAA", "YQ==",
                      "application/vnd.dev.sigstore.bundle.v0.3+json"]


def _json_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.extend(_json_paths(v, (*prefix, k)))
    return out


@pytest.mark.parametrize("method", ["key", "certificate"])
def test_rewritten_bundles_get_the_references_verdict(tmp_path: Path, key: KeyPair,
                                                      method: str) -> None:
    """Every field of a reference-signed bundle deleted, retyped or joined by another:
    safehub and model_signing agree on each (seeded, so every run checks the same)."""
    import random

    model_signing = pytest.importorskip("model_signing")
    model = make_model(tmp_path / "model")
    good = tmp_path / "good.sig"
    config = model_signing.signing.Config()
    if method == "key":
        config.use_elliptic_key_signer(private_key=key.private_path)
        trust: dict[str, Any] = {"public_key": key.public_path}
    else:
        pki = make_pki(tmp_path / "pki")
        (tmp_path / "leaf.pem").write_bytes(pem(pki.leaf))
        (tmp_path / "int.pem").write_bytes(pem(pki.intermediate))
        config.use_certificate_signer(private_key=pki.leaf_key.private_path,
                                      signing_certificate=tmp_path / "leaf.pem",
                                      certificate_chain=[tmp_path / "int.pem"])
        trust = {"certificate_chain": pki.root_path}
    config.sign(model, good)
    base = json.loads(good.read_text())
    rnd = random.Random(f"parity-{method}")
    sig = tmp_path / "rewritten.sig"
    for _ in range(60):
        doc = json.loads(json.dumps(base))
        where = rnd.choice([p for p in _json_paths(doc) if p and p[-1] != "payload"])
        parent = doc
        for part in where[:-1]:
            parent = parent[part]
        how = rnd.choice(["delete", "set", "add"])
        if how == "delete":
            del parent[where[-1]]
        elif how == "set":
            parent[where[-1]] = rnd.choice(_VALUES)
        elif isinstance(parent[where[-1]], dict):
            parent[where[-1]][rnd.choice(["extra", "hint", "keyid", "publicKey",
                                          "certificate"])] = rnd.choice(_VALUES)
        elif isinstance(parent[where[-1]], list) and parent[where[-1]]:
            parent[where[-1]].insert(0, json.loads(json.dumps(parent[where[-1]][-1])))
        sig.write_text(json.dumps(doc))
        ours = verify(model, signature=sig, **trust).ok
        assert reference(model, sig, **trust) is ours, (how, where)
