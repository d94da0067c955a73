"""Verifying and signing a model (a folder or one file) against a signature file.

The public face is :mod:`safehub.signing` (which documents what verification
refuses); the implementation lives here so that the private packages (the audit's
signature checks) use it without importing the facade.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from safehub._namedfile import check_replaceable, open_named
from safehub._signing import keys
from safehub._signing.check import check_model
from safehub._signing.hashing import Provided
from safehub._signing.manifest import Manifest
from safehub._signing.result import (
    Failure,
    FailureKind,
    SignatureInvalid,
    SignatureMissing,
    Signer,
    Verification,
)
from safehub._signing.sign import SignError, build_signature
from safehub._signing.tree import TreeError
from safehub._signing.trust import (
    Trust,
    TrustedCertificates,
    TrustedKey,
    read_capped,
    read_input,
)
from safehub._signing.verifier import verify_signature
from safehub.errors import InternalError, SafehubError

__all__ = ["SignedManifest", "default_signature_path", "load_signature", "sign", "verify"]

log = logging.getLogger("safehub.signing")

PathLike: TypeAlias = "str | os.PathLike[str]"
KeyInput: TypeAlias = "TrustedKey | bytes | PathLike"
ChainInput: TypeAlias = "TrustedCertificates | bytes | PathLike | Iterable[PathLike]"

_MAX_SIGNATURE = 64 << 20


def default_signature_path(model_path: PathLike) -> Path:
    """Where a model's signature lives by default: ``model.sig`` inside a model folder,
    ``<file>.sig`` beside a single-file model."""
    model = Path(model_path)
    if model.is_file():
        return model.with_name(model.name + ".sig")
    return model / "model.sig"


def _trust(public_key: KeyInput | None, certificate_chain: ChainInput | None,
           trust: Trust | None) -> Trust:
    given = [x for x in (public_key, certificate_chain, trust) if x is not None]
    if len(given) != 1:
        raise SafehubError("say what to trust: exactly one of a public key, a certificate "
                           "chain or a trust value",
                           fix="pass public_key=..., certificate_chain=... or trust=...")
    if trust is not None:
        return trust
    if public_key is not None:
        if isinstance(public_key, TrustedKey):
            return public_key
        if isinstance(public_key, bytes):
            return TrustedKey.from_pem(public_key)
        return TrustedKey.from_path(public_key)
    if certificate_chain is None:
        raise InternalError("neither a public key nor a certificate chain to trust")
    if isinstance(certificate_chain, TrustedCertificates):
        return certificate_chain
    if isinstance(certificate_chain, bytes):
        return TrustedCertificates.from_pem(certificate_chain)
    if isinstance(certificate_chain, (str, os.PathLike)):
        return TrustedCertificates.from_paths([certificate_chain])
    return TrustedCertificates.from_paths(list(certificate_chain))


def _read_signature(path: Path) -> bytes:
    opened = open_named(path, what="signature")  # a FIFO or device is refused, never read
    if opened is None:
        raise SignatureMissing(
            "no signature found", subject=str(path),
            fix="pass the signature's location (--signature), or sign the model with "
                "`safehub sign`")
    try:
        with opened as fh:
            data = read_capped(fh, _MAX_SIGNATURE)
    except OSError as exc:
        raise SafehubError(f"cannot read the signature: {exc.strerror}", subject=str(path),
                           fix="check the path and its permissions") from exc
    if len(data) > _MAX_SIGNATURE:
        raise SignatureInvalid(
            "the signature file is implausibly large (over 64 MiB)", subject=str(path),
            failures=(Failure(FailureKind.SIGNATURE_INVALID, "signature file over 64 MiB"),),
            signature=str(path))
    return data


@dataclass(frozen=True)
class SignedManifest:
    """A signature that verified: who signed, and what they signed.

    ``resources`` maps each signed resource name (a path, or ``path:start:end`` for a
    shard; ``.`` is the file of a single-file model) to ``algorithm:hex``.
    """

    signer: Signer
    signature: Path
    model_name: str
    method: str
    hash_type: str
    shard_size: int | None
    ignore_paths: tuple[str, ...]
    resources: Mapping[str, str] = field(repr=False)
    _manifest: Manifest = field(repr=False, compare=False)

    @property
    def paths(self) -> tuple[str, ...]:
        """The signed files, sorted."""
        return tuple(sorted(self._manifest.files))

    def check(self, model_path: PathLike, *, ignore_unsigned_files: bool = False,
              unsafe_ignore_unsigned_code: bool = False, ignore_paths: Collection[str] = (),
              ignore_git_paths: bool = True,
              open_files: Mapping[str, Provided] | None = None,
              max_workers: int | None = None,
              progress: Callable[[str], None] | None = None) -> Verification:
        """Hash ``model_path`` (a folder, or the file of a single-file model) and compare
        it with this manifest, reporting every difference.

        ``ignore_unsigned_files`` lets files the signature does not cover through,
        except code (``*.py``, bytecode, extension modules), which still fails unless
        ``unsafe_ignore_unsigned_code`` is also set. ``ignore_paths`` are extra
        model-relative paths to skip (code under them still fails); with
        ``ignore_git_paths=False`` the top-level ``.git``, ``.gitattributes``, ``.github``
        and ``.gitignore`` are checked like other files, as model_signing's
        ``--no-ignore-git-paths`` does. ``open_files``
        maps model-relative paths (``.`` for a single file) to file objects or
        descriptors to hash instead of opening the path (see the module docs).

        Raises ``SafehubError`` when the model path does not exist.
        """
        if unsafe_ignore_unsigned_code:
            log.warning("unsafe: unsigned code in %s will not fail verification "
                        "(unsafe_ignore_unsigned_code)", model_path)
        model = Path(model_path)
        try:
            return check_model(self._manifest, model, signer=self.signer,
                               signature=self.signature,
                               ignore_unsigned_files=ignore_unsigned_files,
                               unsafe_ignore_unsigned_code=unsafe_ignore_unsigned_code,
                               ignore_paths=ignore_paths, ignore_git_paths=ignore_git_paths,
                               open_files=open_files, max_workers=max_workers,
                               progress=progress)
        except TreeError as exc:
            raise SafehubError(str(exc), subject=str(model),
                               fix="pass the path of the model folder or file") from exc
        except ValueError as exc:  # a bad open_files key
            raise SafehubError(str(exc), subject=str(model)) from exc


def _signed(manifest: Manifest, signer: Signer, signature: Path) -> SignedManifest:
    ser = manifest.serialization
    resources: dict[str, str] = {}
    for path, entry in manifest.files.items():
        if entry.digest is not None:
            resources[path] = f"{ser.algorithm}:{entry.digest}"
        for shard in entry.shards:
            resources[f"{path}:{shard.start}:{shard.end}"] = f"{ser.algorithm}:{shard.digest}"
    return SignedManifest(
        signer=signer, signature=signature, model_name=manifest.model_name,
        method=ser.method, hash_type=ser.hash_type, shard_size=ser.shard_size,
        ignore_paths=ser.ignore_paths, resources=MappingProxyType(resources),
        _manifest=manifest)


def load_signature(signature: PathLike, *, public_key: KeyInput | None = None,
                   certificate_chain: ChainInput | None = None, trust: Trust | None = None,
                   now: dt.datetime | None = None) -> SignedManifest:
    """Read and verify the signature file; return what it signs.

    Trust exactly one of: ``public_key`` (PEM path, PEM bytes or :class:`TrustedKey`),
    ``certificate_chain`` (PEM path(s), PEM bytes or :class:`TrustedCertificates`),
    or ``trust`` (any of those values, or a :class:`SigstoreIdentity`). Certificates
    are checked at ``now`` (default: the current time).

    Raises :class:`SignatureInvalid` (an ``IntegrityError``) when the signature does
    not verify or is malformed, :class:`SignatureMissing` when there is no file, and
    ``SafehubError`` for unusable keys or unreadable files.
    """
    anchor = _trust(public_key, certificate_chain, trust)
    path = Path(signature)
    data = _read_signature(path)
    manifest, signer = verify_signature(data, anchor, source=str(path), now=now)
    return _signed(manifest, signer, path)


def verify(model_path: PathLike, *, signature: PathLike | None = None,
           public_key: KeyInput | None = None, certificate_chain: ChainInput | None = None,
           trust: Trust | None = None, ignore_unsigned_files: bool = False,
           unsafe_ignore_unsigned_code: bool = False, ignore_paths: Collection[str] = (),
           ignore_git_paths: bool = True,
           open_files: Mapping[str, Provided] | None = None, now: dt.datetime | None = None,
           max_workers: int | None = None,
           progress: Callable[[str], None] | None = None) -> Verification:
    """Verify ``model_path`` against its signature (default: :func:`default_signature_path`).

    Every verdict comes back as a :class:`Verification` (``ok``, ``signer``,
    ``failures``): call ``raise_for_failure()`` to turn a failure into an
    ``IntegrityError``. Unusable input raises instead: a missing model path, key or
    certificate file (``SafehubError``) or a missing signature (:class:`SignatureMissing`).
    See :meth:`SignedManifest.check` for the options.
    """
    model = Path(model_path)
    if not os.path.lexists(model):
        raise SafehubError("model path not found", subject=str(model),
                           fix="pass the path of the model folder or file")
    anchor = _trust(public_key, certificate_chain, trust)
    sig_path = Path(signature) if signature is not None else default_signature_path(model)
    try:
        signed = load_signature(sig_path, trust=anchor, now=now)
    except SignatureInvalid as exc:
        return Verification(model=str(model), signature=str(sig_path), signer=None,
                            failures=exc.failures)
    return signed.check(model, ignore_unsigned_files=ignore_unsigned_files,
                        unsafe_ignore_unsigned_code=unsafe_ignore_unsigned_code,
                        ignore_paths=ignore_paths, ignore_git_paths=ignore_git_paths,
                        open_files=open_files, max_workers=max_workers, progress=progress)


def _write_atomic(path: Path, data: bytes) -> None:
    check_replaceable(path, what="signature")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SafehubError(f"cannot write the signature: {exc.strerror}", subject=str(path),
                           fix="pass a writable location with --signature") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sign(model_path: PathLike, *, private_key: bytes | PathLike,
         certificate_chain: Iterable[PathLike] | bytes | None = None,
         signature_path: PathLike | None = None, ignore_paths: Collection[str] = (),
         shard_size: int | None = None, password: bytes | None = None,
         ignore_git_paths: bool = True, max_workers: int | None = None,
         progress: Callable[[str], None] | None = None) -> Path:
    """Sign ``model_path`` and write the signature (default :func:`default_signature_path`).

    ``private_key`` is a PEM EC private key (path or bytes). With ``certificate_chain``
    (PEM paths or bytes: the signing certificate, whose key must match, plus its
    intermediates) the certificate method is used, else the key method. ``shard_size``
    switches to sharded hashing. ``ignore_paths`` leaves model-relative paths out of the
    signature (never code); ``ignore_git_paths=False`` signs the top-level ``.git*``
    entries too. The result verifies with ``model_signing verify key`` /
    ``verify certificate``. Returns the signature path.
    """
    model = Path(model_path)
    if not model.exists():
        raise SafehubError("model path not found", subject=str(model),
                           fix="pass the path of the model folder or file")
    sig_path = Path(signature_path) if signature_path is not None else \
        default_signature_path(model)
    check_replaceable(sig_path, what="signature")  # before hashing: never a device or FIFO
    pem = private_key if isinstance(private_key, bytes) else read_input(private_key,
                                                                        "private key file")
    source = "<PEM>" if isinstance(private_key, bytes) else os.fspath(private_key)
    try:
        key = keys.load_private_key(pem, password)
    except keys.KeyProblem as exc:
        raise SafehubError(f"unusable private key: {exc}", subject=source,
                           fix="pass an unencrypted PEM EC private key on P-256, P-384 or "
                               "P-521 (or its password)",
                           cli_fix="pass an unencrypted PEM EC private key on P-256, P-384 or "
                                   "P-521 to --key (decrypt one with `openssl pkey -in KEY "
                                   "-out PLAIN.pem`)") from exc
    chain = _signing_chain(key, certificate_chain)
    if shard_size is not None and shard_size <= 0:
        raise SafehubError(f"shard size must be positive, got {shard_size}")
    try:
        data, _count = build_signature(model, private_key=key, certificates=chain,
                                       signature_path=sig_path, ignore_paths=ignore_paths,
                                       shard_size=shard_size,
                                       ignore_git_paths=ignore_git_paths,
                                       max_workers=max_workers, progress=progress)
    except SignError as exc:
        raise SafehubError(f"cannot sign: {exc}", subject=str(model),
                           fix="replace links with real files, make every file readable, "
                               "and do not leave code out of the signature") from exc
    except TreeError as exc:
        raise SafehubError(str(exc), subject=str(model)) from exc
    _write_atomic(sig_path, data)
    return sig_path


def _signing_chain(key: ec.EllipticCurvePrivateKey,
                   certificate_chain: Iterable[PathLike] | bytes | None
                   ) -> list[x509.Certificate]:
    if certificate_chain is None:
        return []
    found = (TrustedCertificates.from_pem(certificate_chain)
             if isinstance(certificate_chain, bytes)
             else TrustedCertificates.from_paths(
                 [certificate_chain] if isinstance(certificate_chain, (str, os.PathLike))
                 else list(certificate_chain)))
    public = key.public_key()
    leaves = [c for c in found.certificates if c.public_key() == public]
    if not leaves:
        raise SafehubError("no certificate in the chain holds the private key's public key",
                           subject=found.source,
                           fix="pass the signing certificate issued for this key, then its "
                               "intermediates")
    leaf = leaves[0]
    now = dt.datetime.now(dt.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise SafehubError(
            f"the signing certificate is not valid now (valid {leaf.not_valid_before_utc} to "
            f"{leaf.not_valid_after_utc}); verifiers would reject the signature",
            subject=found.source, fix="renew the signing certificate")
    return [leaf, *[c for c in found.certificates if c is not leaf]]


# Public as safehub.signing.SignedManifest: pickles and help() name the public path.
SignedManifest.__module__ = "safehub.signing"
