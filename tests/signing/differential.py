"""A differential case generator: safehub against model_signing 1.1.1 on real files.

Each :class:`Case` is one model layout, one hashing configuration, one signer and one
set of verify options, signed by the *reference* tool's own API (so every signature is
one the reference can produce), then optionally mutated (the files, or the bundle), and
verified by both tools. The reference's verdict is its API's, configured as its CLI
configures it (``--signature`` inside the model ignored, ``--[no-]ignore-git-paths``),
with the serialization the signature was made with.

A disagreement is one of:

- ``SAFEHUB_ACCEPTS``: safehub verifies what the reference refuses (a security finding,
  unless it is the reference's own bug listed in :data:`REFERENCE_BUGS`);
- ``SAFEHUB_REFUSES``: safehub refuses what the reference verifies (an interop bug,
  unless every failure is one safehub refuses on purpose, see :func:`deliberate`).

Nothing here needs the network. Used by ``tests/signing/test_differential.py``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.signing.helpers import CURVES, HASH_OF, make_cert, make_key, pem

__all__ = ["Case", "Outcome", "cases", "deliberate", "deliberate_failures", "run_case"]

LAYOUTS = ("single", "nested", "empty", "unicode", "dotfiles", "git", "gitfile", "symlinks",
           "big")
HASHES = ("sha256", "blake2", "blake3")
SIGNERS = ("key-P-256", "key-P-384", "key-P-521", "cert-1", "cert-2", "cert-3",
           "cert-3-root", "cert-2-p384", "cert-3-trustall", "cert-shared")
FILE_MUTATIONS = ("none", "edit", "append", "truncate", "add-data", "add-code", "add-empty",
                  "add-empty-dir", "remove", "rename", "swap-shards", "edit-ignored",
                  "add-under-ignored", "edit-git", "add-nested-git", "add-symlink",
                  "replace-with-symlink", "add-dotfile", "add-fifo", "file-to-folder",
                  "add-hardlink", "case-rename")
BUNDLE_MUTATIONS = ("sig-flip", "payload-type", "media-type-0.1", "media-type-0.2",
                    "media-type-0.3-alt", "drop-hint", "other-hint", "drop-intermediate",
                    "reverse-chain", "extra-cert", "keyid", "second-signature", "bom",
                    "utf16", "compact", "ascii-escaped", "payload-b64-newlines")
# Statement rewrites, re-signed with the trusted key: what a (legitimate but odd) signer
# could publish, so the reference's reading of the statement is what is compared.
STATEMENT_MUTATIONS = ("subject-name", "two-subjects", "statement-v0.1", "predicate-extra",
                       "serialization-extra", "resources-reversed", "resource-extra-field",
                       "digest-uppercase", "drop-resource", "duplicate-resource",
                       "ignore-add-code", "ignore-add-all", "allow-symlinks-true",
                       "hash-type-alias", "shard-size-float", "name-dot-slash",
                       "compat-predicate")
MUTATIONS = FILE_MUTATIONS + BUNDLE_MUTATIONS + STATEMENT_MUTATIONS


@dataclass(frozen=True)
class Case:
    """One signed model, one verification, one change in between."""

    layout: str = "nested"
    hash: str = "sha256"
    shard_size: int | None = None
    ignore_paths: tuple[str, ...] = ()
    ignore_git_paths: bool = True
    allow_symlinks: bool = False
    signer: str = "key-P-256"
    sig_inside: bool = True
    sig_recorded: bool = True  # the signature file is in the signer's ignore_paths
    sig_sub: bool = False  # inside the model, in a sub-folder (sigs/model.sig)
    tool: str = "reference"  # who signs: the reference, or safehub (verified by both)
    ignore_unsigned: bool = False
    verify_ignore: tuple[str, ...] = ()  # the verifier's own ignore paths (--ignore-paths)
    verify_git: bool | None = None  # the verifier's ignore_git_paths (None: the signer's)
    mutation: str = "none"
    seed: int = 0

    def label(self) -> str:
        """A short, unique description for reports."""
        return (f"{self.tool}:{self.layout}/{self.hash}/{self.shard_size or 'files'}/"
                f"ign={','.join(self.ignore_paths) or '-'}/git={int(self.ignore_git_paths)}/"
                f"sym={int(self.allow_symlinks)}/{self.signer}/in={int(self.sig_inside)}"
                f"{'' if self.sig_recorded else '(unrecorded)'}/"
                f"unsigned={int(self.ignore_unsigned)}/"
                f"vign={','.join(self.verify_ignore) or '-'}/"
                f"{'' if self.verify_git is None else f'vgit={int(self.verify_git)}/'}"
                f"{self.mutation}#{self.seed}")

    @property
    def verifier_git(self) -> bool:
        """Whether the verifier skips the top-level .git* entries."""
        return self.ignore_git_paths if self.verify_git is None else self.verify_git


@dataclass
class Outcome:
    """Both verdicts for a case, and what each side said."""

    case: Case
    reference: bool | None  # None: the reference could not sign this case
    safehub: bool | None
    reference_error: str = ""
    cli: bool | None = None  # `safehub verify` (exit 0), where asked for
    cli_failures: list[tuple[str, str, str]] = field(default_factory=list)
    guessed: bool | None = None  # the reference API reading the serialization itself
    guessed_error: str = ""
    safehub_failures: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: str = ""

    @property
    def agrees(self) -> bool:
        return self.skipped != "" or self.reference is self.safehub

    @property
    def kind(self) -> str:
        if self.agrees:
            return "agree"
        return "SAFEHUB_ACCEPTS" if self.safehub else "SAFEHUB_REFUSES"


def deliberate(outcome: Outcome) -> str | None:
    """Why safehub refuses, on purpose, a model the reference verifies (None: it does not).

    Each reason is documented in SECURITY.md and README.md: code is never left unsigned
    (not by the signer's ignore paths, not as an unlisted empty file of a shard
    signature, not by ``ignore_unsigned_files`` in the library), links and special
    files are refused wherever they are, and a statement that contradicts itself is not
    read at all.
    """
    if outcome.kind != "SAFEHUB_REFUSES":
        return None
    return deliberate_failures(outcome.safehub_failures)


def deliberate_failures(failures: list[tuple[str, str, str]]) -> str | None:
    """The documented reasons behind ``failures`` (kind, path, message); None when any
    failure is not one of them."""
    reasons = set()
    for kind, _path, message in failures:
        if kind == "unsigned-code":
            reasons.add("unsigned code")
        elif kind == "unsafe-path" and "symlink" in message:
            reasons.add("symlink")
        elif kind == "unsafe-path" and "special file" in message:
            reasons.add("special file")
        elif kind == "signature-invalid" and "shard_size" in message:
            reasons.add("self-contradicting statement")
        else:
            return None
    return ", ".join(sorted(reasons)) or None


# --- layouts ----------------------------------------------------------------------------

def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_layout(root: Path, layout: str, rnd: random.Random) -> Path:
    """Create the model for ``layout`` under ``root``; return the model path."""
    blob = lambda n: rnd.randbytes(n)  # noqa: E731
    if layout == "single":
        root.mkdir(parents=True)
        path = root / "weights.bin"
        path.write_bytes(blob(rnd.choice([0, 1, 700, 4096, 5000])))
        return path
    model = root / "model"
    model.mkdir(parents=True)
    _write(model, "hubconf.py", b"dependencies = []\n")
    _write(model, "weights.bin", blob(rnd.choice([1, 511, 512, 1500, 4096])))
    if layout == "nested":
        _write(model, "a/b/c/deep.bin", blob(900))
        _write(model, "a/b/sibling.json", b'{"x": 1}\n')
        _write(model, "pkg/__init__.py", b"")
        _write(model, "pkg/sub/mod.py", b"VALUE = 2\n")
    elif layout == "empty":
        _write(model, "empty.bin", b"")
        _write(model, "sub/empty.txt", b"")
        _write(model, "sub/data.bin", blob(300))
        (model / "emptydir" / "deeper").mkdir(parents=True)
    elif layout == "unicode":
        for name in ("模型.bin", "café.json", "cafe\u0301.json", "with space.bin",
                     "semi;colon#hash%.txt", "naïve/ünïcödé.bin", "tab\tname.bin",
                     "emoji-🙂.bin", "line\nbreak.txt", "back\\slash.bin", "colon:name.bin",
                     "-dash.bin", "q'uote\".bin"):
            _write(model, name, blob(rnd.choice([0, 3, 600])))
    elif layout == "dotfiles":
        _write(model, ".hidden", blob(50))
        _write(model, ".config/settings.json", b"{}\n")
        _write(model, "sub/.keep", b"")
        _write(model, ".gitkeep", b"x")
        _write(model, ".gitmodules", b"[submodule]\n")
    elif layout == "git":
        _write(model, ".git/HEAD", b"ref: refs/heads/main\n")
        _write(model, ".git/objects/ab/cdef", blob(40))
        _write(model, ".gitattributes", b"*.bin filter=lfs\n")
        _write(model, ".gitignore", b"*.tmp\n")
        _write(model, ".github/workflows/ci.yml", b"on: push\n")
        _write(model, "sub/.git/config", b"[core]\n")
        _write(model, "sub/.gitignore", b"x\n")
    elif layout == "gitfile":  # a worktree's or submodule's .git is a file
        _write(model, ".git", b"gitdir: ../.git/worktrees/model\n")
        _write(model, ".github", b"not a folder\n")
        _write(model, "sub/.git", b"gitdir: elsewhere\n")
    elif layout == "symlinks":
        _write(model, "real/target.bin", blob(200))
        os.symlink("real/target.bin", model / "link.bin")
        os.symlink("real", model / "linkdir")
    elif layout == "big":
        for i, size in enumerate((1, 255, 256, 257, 1024, 3000)):
            _write(model, f"shard{i}.bin", blob(size))
    else:
        raise ValueError(layout)
    return model


# --- signers ----------------------------------------------------------------------------

@dataclass
class Signer:
    """What the reference signs with, and what each verifier trusts."""

    private: Path
    certificate: Path | None = None
    chain: list[Path] = field(default_factory=list)
    trust_key: Path | None = None
    trust_chain: Path | None = None
    key: ec.EllipticCurvePrivateKey | None = None


def make_signer(where: Path, name: str, shared: Path | None) -> Signer:
    """Keys on three curves, certificate chains of depth 1 to 3 (P-256 or P-384 leaf, the
    root in the bundle or not, intermediates trusted or not), and the shared PKI."""
    where.mkdir(parents=True, exist_ok=True)
    if name.startswith("key-"):
        pair = make_key(where, "signer", name[4:])
        return Signer(private=pair.private_path, trust_key=pair.public_path, key=pair.key)
    if name == "cert-shared":
        if shared is None:
            raise LookupError("the shared PKI is not available")
        pki = shared / "pki"
        key = serialization.load_pem_private_key((pki / "leaf_key.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return Signer(private=pki / "leaf_key.pem", certificate=pki / "leaf.pem",
                      chain=[pki / "intermediate.pem"], trust_chain=pki / "ca.pem", key=key)
    depth = int(name.split("-")[1])
    # The reference's signer needs a chain; with a root-issued leaf it is the root itself.
    with_root = depth == 1 or name.endswith("-root")
    leaf = make_key(where, "leaf", "P-384" if name.endswith("-p384") else "P-256")
    root_key = ec.generate_private_key(CURVES["P-384"])
    root = make_cert(root_key, "diff root", ca=True, path_length=depth)
    issuer_key, issuer = root_key, root
    chain = []
    for level in range(depth - 1):
        k = ec.generate_private_key(CURVES["P-256"])
        c = make_cert(k, f"diff intermediate {level}", issuer_key=issuer_key,
                      issuer_cert=issuer, ca=True, path_length=depth - 2 - level)
        chain.append(c)
        issuer_key, issuer = k, c
    cert = make_cert(leaf.key, "diff signer", issuer_key=issuer_key, issuer_cert=issuer)
    (where / "leaf-cert.pem").write_bytes(pem(cert))
    paths = []
    for i, c in enumerate(reversed(chain)):  # nearest issuer first
        p = where / f"int{i}.pem"
        p.write_bytes(pem(c))
        paths.append(p)
    (where / "root.pem").write_bytes(pem(root))
    if with_root:
        paths.append(where / "root.pem")
    trust = where / "root.pem"
    if name.endswith("-trustall"):  # the verifier's file holds the intermediates too
        trust = where / "trust.pem"
        trust.write_bytes(pem(root, *chain))
    return Signer(private=leaf.private_path, certificate=where / "leaf-cert.pem", chain=paths,
                  trust_chain=trust, key=leaf.key)


def _custom_cert(key: ec.EllipticCurvePrivateKey, cn: str,
                 issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Name, *,
                 bc: tuple[bool, bool] | None, ku: str | None,
                 eku: list[x509.ObjectIdentifier] | None = None, pathlen: int | None = None,
                 unknown_critical: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if bc is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=bc[0], path_length=pathlen),
                                        critical=bc[1])
    if ku is not None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=ku == "sign", content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ku == "ca",
            crl_sign=ku == "ca", encipher_only=False, decipher_only=False), critical=True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if unknown_critical:
        builder = builder.add_extension(x509.UnrecognizedExtension(
            x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def profile_signer(where: Path, root: dict[str, Any], inter: dict[str, Any],
                   leaf: dict[str, Any]) -> Signer:
    """root -> intermediate -> leaf with the given extensions (``_custom_cert``'s keywords
    over a CA or code-signing default), for certificate-profile cases."""
    where.mkdir(parents=True, exist_ok=True)
    keys = [ec.generate_private_key(CURVES["P-256"]) for _ in range(3)]
    ca: dict[str, Any] = {"bc": (True, True), "ku": "ca"}
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "profile root")])
    root_cert = _custom_cert(keys[0], "profile root", keys[0], root_name, **{**ca, **root})
    inter_cert = _custom_cert(keys[1], "profile intermediate", keys[0], root_cert.subject,
                              **{**ca, **inter})
    leaf_cert = _custom_cert(keys[2], "profile signer", keys[1], inter_cert.subject,
                             **{"bc": (False, True), "ku": "sign",
                                "eku": [ExtendedKeyUsageOID.CODE_SIGNING], **leaf})
    private = where / "leaf-key.pem"
    private.write_bytes(keys[2].private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    for name, cert in (("leaf-cert", leaf_cert), ("int", inter_cert), ("root", root_cert)):
        (where / f"{name}.pem").write_bytes(pem(cert))
    return Signer(private=private, certificate=where / "leaf-cert.pem",
                  chain=[where / "int.pem"], trust_chain=where / "root.pem", key=keys[2])


# --- the reference ----------------------------------------------------------------------

def _hashing(ms: Any, case: Case, ignore: list[Path], ignore_git_paths: bool) -> Any:
    config = ms.hashing.Config()
    if case.shard_size is None:
        config.use_file_serialization(hashing_algorithm=case.hash,
                                      allow_symlinks=case.allow_symlinks)
    else:
        config.use_shard_serialization(hashing_algorithm=case.hash,
                                       shard_size=case.shard_size,
                                       allow_symlinks=case.allow_symlinks)
    config.set_ignored_paths(paths=ignore, ignore_git_paths=ignore_git_paths)
    config.set_allow_symlinks(case.allow_symlinks)
    return config


def reference_sign(ms: Any, case: Case, model: Path, sig: Path, signer: Signer) -> None:
    """Sign with the reference API (as its CLI does: the signature inside is ignored)."""
    ignore = [Path(p) for p in case.ignore_paths]
    if case.sig_inside and case.sig_recorded and model.is_dir():
        ignore.append(sig.relative_to(model))
    config = ms.signing.Config().set_hashing_config(
        _hashing(ms, case, ignore, case.ignore_git_paths))
    if signer.certificate is None:
        config.use_elliptic_key_signer(private_key=signer.private)
    else:
        config.use_certificate_signer(private_key=signer.private,
                                      signing_certificate=signer.certificate,
                                      certificate_chain=signer.chain)
    with contextlib.redirect_stdout(io.StringIO()):
        config.sign(model, sig)


def reference_verify(ms: Any, case: Case, model: Path, sig: Path,
                     signer: Signer) -> tuple[bool, str]:
    """The reference's verdict, configured as its CLI configures it, with the signer's
    serialization (its CLI cannot name a sharded or BLAKE2 one)."""
    config = ms.verifying.Config()
    if signer.trust_key is not None:
        config.use_elliptic_key_verifier(public_key=signer.trust_key)
    else:
        config.use_certificate_verifier(certificate_chain=[signer.trust_chain])
    ignore = [Path(p) for p in case.verify_ignore] if model.is_dir() else []
    if model.is_dir() and sig.is_relative_to(model):  # the CLI ignores --signature
        ignore.append(sig.relative_to(model))
    config.set_hashing_config(_hashing(ms, case, ignore, case.verifier_git))
    config.set_ignore_unsigned_files(case.ignore_unsigned)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            config.verify(model, sig)
    except Exception as exc:  # the reference signals every refusal with some exception
        return False, f"{type(exc).__name__}: {exc}"[:300]
    return True, ""


def reference_guess(ms: Any, case: Case, model: Path, sig: Path,
                    signer: Signer) -> tuple[bool, str]:
    """The reference API's verdict with no hashing configuration: it then reads the
    serialization (and ignore paths) from the signature itself."""
    config = ms.verifying.Config()
    if signer.trust_key is not None:
        config.use_elliptic_key_verifier(public_key=signer.trust_key)
    else:
        config.use_certificate_verifier(certificate_chain=[signer.trust_chain])
    config.set_ignore_unsigned_files(case.ignore_unsigned)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            config.verify(model, sig)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]
    return True, ""


def safehub_sign(case: Case, model: Path, sig: Path, signer: Signer) -> str:
    """Sign with safehub; a reason when it cannot sign this case ('' when it signed)."""
    from safehub.errors import SafehubError
    from safehub.signing import sign

    if case.hash != "sha256" or case.allow_symlinks:
        return "safehub signs SHA-256 without links only"
    chain = None if signer.certificate is None else [signer.certificate, *signer.chain]
    try:
        sign(model, private_key=signer.private, certificate_chain=chain, signature_path=sig,
             ignore_paths=case.ignore_paths, shard_size=case.shard_size,
             ignore_git_paths=case.ignore_git_paths)
    except SafehubError as exc:  # links, code left out by ignore paths, empty code
        return f"safehub cannot sign: {exc.message}"[:200]
    return ""


def safehub_verify(case: Case, model: Path, sig: Path,
                   signer: Signer) -> tuple[bool, list[tuple[str, str, str]]]:
    from safehub.signing import verify

    trust: dict[str, Any] = ({"public_key": signer.trust_key} if signer.trust_key else
                             {"certificate_chain": signer.trust_chain})
    result = verify(model, signature=sig, ignore_unsigned_files=case.ignore_unsigned,
                    ignore_git_paths=case.verifier_git, ignore_paths=case.verify_ignore,
                    **trust)
    return result.ok, [(f.kind.value, f.path or "", f.message[:160]) for f in result.failures]


def safehub_cli_verify(case: Case, model: Path, sig: Path,
                       signer: Signer) -> tuple[int, list[tuple[str, str, str]]]:
    """``safehub verify`` in-process, as a user would type it: exit code and failures."""
    from safehub.cli import main

    args = ["verify", str(model), "--signature", str(sig), "-f", "json"]
    args += (["--key", str(signer.trust_key)] if signer.trust_key else
             ["--certificate-chain", str(signer.trust_chain)])
    if case.ignore_unsigned:
        args.append("--ignore-unsigned-files")
    if not case.verifier_git:
        args.append("--no-ignore-git-paths")
    for path in case.verify_ignore:
        args += ["--ignore-path", path]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    failures = json.loads(out.getvalue()).get("failures", []) if out.getvalue() else []
    return code, [(f["kind"], f.get("path") or "", f["message"][:160]) for f in failures]


# --- mutations --------------------------------------------------------------------------

def _files(model: Path) -> list[Path]:
    if model.is_file():
        return [model]
    return sorted(p for p in model.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.name != "model.sig")


def _data_files(model: Path) -> list[Path]:
    return [p for p in _files(model) if p.stat().st_size > 0] or _files(model)


def mutate_files(case: Case, model: Path, rnd: random.Random) -> bool:
    """Apply a file mutation; False when it does not apply to this layout."""
    m = case.mutation
    folder = model if model.is_dir() else None
    if m == "none":
        return True
    targets = _data_files(model)
    if m in ("edit", "append", "truncate", "swap-shards"):
        if not targets:
            return False
        path = rnd.choice(targets)
        data = bytearray(path.read_bytes())
        if m == "edit":
            if not data:
                return False
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        elif m == "append":
            data += b"\0"
        elif m == "truncate":
            data = bytearray()
        else:
            size = case.shard_size or 256
            if len(data) < 2 * size:
                return False
            a, b = bytes(data[:size]), bytes(data[size:2 * size])
            if a == b:
                return False
            data[:size], data[size:2 * size] = b, a
        path.write_bytes(bytes(data))
        return True
    if folder is None:
        return False
    if m == "add-data":
        _write(folder, "added.bin", b"new data")
    elif m == "add-code":
        _write(folder, "evil.py", b"import os\n")
    elif m == "add-empty":
        _write(folder, "added-empty.dat", b"")
    elif m == "add-empty-dir":
        (folder / "new-empty-dir").mkdir()
    elif m == "add-dotfile":
        _write(folder, ".added-dotfile", b"x")
    elif m == "remove":
        rnd.choice(targets).unlink()
    elif m == "rename":
        path = rnd.choice(targets)
        path.rename(path.with_name(path.name + ".renamed"))
    elif m in ("edit-ignored", "add-under-ignored"):
        if not case.ignore_paths:
            return False
        ignored = folder / case.ignore_paths[0]
        if m == "edit-ignored":
            if not ignored.is_file():
                return False
            ignored.write_bytes(ignored.read_bytes() + b"changed")
        else:
            base = ignored if ignored.is_dir() else ignored.parent
            _write(folder, str((base / "planted.bin").relative_to(folder)), b"planted")
    elif m == "edit-git":
        target = folder / ".gitattributes"
        if not target.exists():
            return False
        target.write_bytes(b"changed\n")
    elif m == "add-nested-git":
        _write(folder, "sub/.gitattributes", b"* binary\n")
    elif m == "add-symlink":
        os.symlink("weights.bin", folder / "alias.bin")
    elif m == "replace-with-symlink":
        path = folder / "weights.bin"
        copy = folder / ".shadow-weights"
        shutil.copyfile(path, copy)
        path.unlink()
        os.symlink(".shadow-weights", path)
    elif m == "add-fifo":
        os.mkfifo(folder / "pipe")
    elif m == "file-to-folder":
        path = rnd.choice(targets)
        data = path.read_bytes()
        path.unlink()
        _write(folder, str(path.relative_to(folder) / "inner.bin"), data)
    elif m == "add-hardlink":
        os.link(rnd.choice(targets), folder / "hardlink.bin")
    elif m == "case-rename":
        path = rnd.choice(targets)
        if path.name.upper() == path.name:
            return False
        path.rename(path.with_name(path.name.upper()))
    else:
        raise ValueError(m)
    return True


def _sign_envelope(doc: dict[str, Any], payload: bytes, key: ec.EllipticCurvePrivateKey) -> None:
    pae = b"DSSEv1 %d %s %d %s" % (28, b"application/vnd.in-toto+json", len(payload), payload)
    sig = key.sign(pae, ec.ECDSA(HASH_OF[key.curve.name]))
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(sig).decode()


def _root(resources: list[dict[str, Any]]) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()


def mutate_bundle(case: Case, sig: Path, signer: Signer, rnd: random.Random) -> bool:
    """Rewrite the bundle (or its statement, re-signed with the trusted key)."""
    m = case.mutation
    doc = json.loads(sig.read_text())
    material = doc["verificationMaterial"]
    env = doc["dsseEnvelope"]
    if m == "sig-flip":
        raw = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
        raw[rnd.randrange(len(raw))] ^= 0x01
        env["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    elif m == "payload-type":
        env["payloadType"] = "application/vnd.in-toto.v1+json"
    elif m.startswith("media-type"):
        base = "application/vnd.dev.sigstore.bundle+json;version="
        doc["mediaType"] = base + {"media-type-0.1": "0.1", "media-type-0.2": "0.2",
                                   "media-type-0.3-alt": "0.3"}[m]
    elif m in ("drop-hint", "other-hint"):
        if "publicKey" not in material:
            return False
        if m == "drop-hint":
            material["publicKey"].pop("hint", None)
        else:
            material["publicKey"]["hint"] = hashlib.sha256(b"other").hexdigest()
    elif m in ("drop-intermediate", "reverse-chain", "extra-cert"):
        chain = material.get("x509CertificateChain", {}).get("certificates")
        if not chain:
            return False
        if m == "drop-intermediate":
            if len(chain) < 2:
                return False
            del chain[1]
        elif m == "reverse-chain":
            if len(chain) < 2:
                return False
            chain.reverse()
        else:
            chain.append(dict(chain[0]))
    elif m == "keyid":
        env["signatures"][0]["keyid"] = "someone-else"
    elif m == "second-signature":
        env["signatures"].append({"sig": env["signatures"][0]["sig"], "keyid": ""})
    elif m in ("bom", "utf16", "compact", "ascii-escaped"):
        # The same JSON in other encodings and spellings.
        text = {"compact": json.dumps(doc, separators=(",", ":")),
                "ascii-escaped": json.dumps(doc).replace("m", "\\u006d")}.get(m, json.dumps(doc))
        sig.write_bytes({"bom": b"\xef\xbb\xbf" + text.encode(),
                         "utf16": text.encode("utf-16")}.get(m, text.encode()))
        return True
    elif m == "payload-b64-newlines":
        raw = env["payload"]
        env["payload"] = "\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))
    elif m in STATEMENT_MUTATIONS:
        assert signer.key is not None
        stmt = json.loads(base64.b64decode(env["payload"]))
        if not _mutate_statement(m, stmt, rnd):
            return False
        payload = json.dumps(stmt).encode()
        _sign_envelope(doc, payload, signer.key)
    else:
        raise ValueError(m)
    sig.write_text(json.dumps(doc))
    return True


def _mutate_statement(m: str, stmt: dict[str, Any], rnd: random.Random) -> bool:
    pred = stmt["predicate"]
    ser = pred["serialization"]
    res = pred["resources"]
    restamp = True
    if m == "subject-name":
        stmt["subject"][0]["name"] = "../../elsewhere"
    elif m == "two-subjects":
        stmt["subject"].append(dict(stmt["subject"][0]))
    elif m == "statement-v0.1":
        stmt["_type"] = "https://in-toto.io/Statement/v0.1"
    elif m == "predicate-extra":
        pred["extra"] = {"anything": 1}
    elif m == "serialization-extra":
        ser["extra"] = True
    elif m == "resources-reversed":
        if len(res) < 2:
            return False
        res.reverse()
    elif m == "resource-extra-field":
        if not res:
            return False
        res[0]["uri"] = "file:///etc/passwd"
    elif m == "digest-uppercase":
        if not res:
            return False
        res[0]["digest"] = res[0]["digest"].upper()
        restamp = False
    elif m == "drop-resource":
        if not res:
            return False
        res.pop(rnd.randrange(len(res)))
    elif m == "duplicate-resource":
        if not res:
            return False
        res.append(dict(res[0]))
    elif m == "ignore-add-code":
        ser["ignore_paths"] = [*ser.get("ignore_paths", []), "hubconf.py"]
    elif m == "ignore-add-all":
        ser["ignore_paths"] = [*ser.get("ignore_paths", []), "."]
    elif m == "allow-symlinks-true":
        ser["allow_symlinks"] = True
    elif m == "hash-type-alias":
        if ser["hash_type"] != "blake2b":
            return False
        ser["hash_type"] = "blake2"
    elif m == "shard-size-float":
        if ser["method"] != "shards":
            return False
        ser["shard_size"] = float(ser["shard_size"]) + 0.5
    elif m == "name-dot-slash":
        if not res:
            return False
        res[0]["name"] = "./" + res[0]["name"]
    elif m == "compat-predicate":
        stmt["predicateType"] = "https://model_signing/Digests/v0.1"
    else:
        raise ValueError(m)
    if restamp:
        stmt["subject"][0]["digest"]["sha256"] = _root(res)
    return True


# --- running ----------------------------------------------------------------------------

def run_case(case: Case, where: Path, *, shared: Path | None = None,
             cli: bool = False) -> Outcome:
    """Build, sign (reference), mutate and verify (both) one case under ``where``; with
    ``cli``, ``safehub verify`` too."""
    import model_signing as ms

    rnd = random.Random(case.seed)
    model = build_layout(where / "tree", case.layout, rnd)
    if model.is_file() and not case.sig_inside:
        return Outcome(case, None, None, skipped="single file: signature is beside it")
    sig = (model / "model.sig") if model.is_dir() and case.sig_inside else where / "model.sig"
    if model.is_dir() and case.sig_inside and case.sig_sub:
        sig = model / "sigs" / "model.sig"
        sig.parent.mkdir()
    if model.is_file():
        sig = model.with_name(model.name + ".sig")
    try:
        signer = make_signer(where / "signer", case.signer, shared)
    except LookupError as exc:
        return Outcome(case, None, None, skipped=str(exc))
    if case.tool == "safehub":
        problem = safehub_sign(case, model, sig, signer)
        if problem:
            return Outcome(case, None, None, skipped=problem)
    else:
        try:
            reference_sign(ms, case, model, sig, signer)
        except Exception as exc:  # the reference cannot sign this model (links, odd names)
            return Outcome(case, None, None, skipped=f"reference cannot sign: {exc}"[:200])
    if case.mutation in FILE_MUTATIONS:
        applied = mutate_files(case, model, rnd)
    else:
        applied = mutate_bundle(case, sig, signer, rnd)
    if not applied:
        return Outcome(case, None, None, skipped="mutation does not apply")
    ref, why = reference_verify(ms, case, model, sig, signer)
    ours, failures = safehub_verify(case, model, sig, signer)
    guessed, guess_why = reference_guess(ms, case, model, sig, signer) if ours else (None, "")
    outcome = Outcome(case, ref, ours, reference_error=why, guessed=guessed,
                      guessed_error=guess_why, safehub_failures=failures)
    if cli:
        code, outcome.cli_failures = safehub_cli_verify(case, model, sig, signer)
        assert code in (0, 1), (code, case.label())
        outcome.cli = code == 0
    return outcome


def cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` cases drawn from every dimension (seeded: the same list each run)."""
    rnd = random.Random(f"signing-differential-{seed}")
    out = []
    for i in range(count):
        layout = rnd.choice(LAYOUTS)
        shard = rnd.choice([None, None, 1, 7, 256, 512, 10_000])
        ignore: tuple[str, ...] = rnd.choice([(), (), ("a/b",), ("a/b/c/deep.bin",),
                                              ("sub",), ("weights.bin",), ("hubconf.py",),
                                              ("nope/missing",), ("./a//b/",)])
        out.append(Case(
            tool="safehub" if rnd.random() < 0.2 else "reference", sig_sub=rnd.random() < 0.15,
            layout=layout, hash=rnd.choice(HASHES), shard_size=shard, ignore_paths=ignore,
            ignore_git_paths=rnd.random() < 0.8, allow_symlinks=rnd.random() < 0.3,
            signer=rnd.choice(SIGNERS), sig_inside=rnd.random() < 0.7,
            sig_recorded=rnd.random() < 0.8, ignore_unsigned=rnd.random() < 0.3,
            verify_ignore=rnd.choice([(), (), (), ("added.bin",), ("sub",), ("a/b/c",),
                                      ("weights.bin",), ("./added.bin",), ("sub/",),
                                      ("a//b",), ("x/../weights.bin",)]),
            verify_git=rnd.choice([None, None, None, True, False]),
            mutation=rnd.choice(MUTATIONS), seed=i))
    return out
