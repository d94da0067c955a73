"""OpenSSF Model Signing (OMS): verify and sign models, with no dependency beyond
``cryptography``.

An OMS signature (``model.sig``) is a Sigstore bundle holding a DSSE envelope over
an in-toto statement that lists one SHA-256 per file (or per file shard). It is what
``model_signing`` (the reference tool) writes and what NVIDIA NGC publishes.

Verify in one call::

    from safehub.signing import verify
    result = verify("path/to/model", public_key="ml-platform.pub")
    result.raise_for_failure()          # IntegrityError naming file, digest and key
    result.signer.describe(); result.files["model.safetensors"]

or in two steps, when the signature is checked once and the model later::

    signed = load_signature("model/model.sig", certificate_chain=["ca.pem"])
    result = signed.check("model")

Verify exactly the bytes you load: hashing a path and then opening it again lets an
attacker swap the file in between. Open the files you will load first, pass them as
``open_files={"model.safetensors": fh}`` (file objects or descriptors), and read
from the same objects afterwards; safehub hashes through your descriptor (with
positional reads, leaving its offset alone). This defeats path swaps (renames,
symlinks); a file that someone can still write in place should be copied to a
private, read-only location first.

What verification refuses: everything ``model_signing`` 1.1.1 refuses (the bundle,
statement and chain are read as it reads them), and more: a signature that does not
verify with the trusted key or chain (certificates are checked for validity *now*,
which the reference tool does not do, as well as at the leaf's notBefore, as it
does); signed files that differ or are missing; files the signature does not cover
(unless ``ignore_unsigned_files``, and never for Python code unless
``unsafe_ignore_unsigned_code``; a shard signature cannot be checked that way at all,
as in model_signing: leave extra files out with ``ignore_paths``); symlinks (the model
path itself included, unless its file is passed in ``open_files``) and special files
anywhere, ``.git`` included; manifests naming paths outside the model. The standard's ``.git``,
``.gitattributes``, ``.github`` and ``.gitignore`` entries at the top level and the
signature file itself are skipped (unless ``ignore_git_paths=False``), as are the
signer's recorded ``ignore_paths``.
"""

from __future__ import annotations

from safehub._signing.keyless import sigstore_available
from safehub._signing.manifest import SINGLE_FILE
from safehub._signing.model import (
    SignedManifest,
    default_signature_path,
    load_signature,
    sign,
    verify,
)
from safehub._signing.result import (
    Failure,
    FailureKind,
    SignatureInvalid,
    SignatureMissing,
    Signer,
    Verification,
    VerificationFailed,
)
from safehub._signing.trust import SigstoreIdentity, Trust, TrustedCertificates, TrustedKey

__all__ = [
    "SINGLE_FILE",
    "Failure",
    "FailureKind",
    "SignatureInvalid",
    "SignatureMissing",
    "SignedManifest",
    "Signer",
    "SigstoreIdentity",
    "Trust",
    "TrustedCertificates",
    "TrustedKey",
    "Verification",
    "VerificationFailed",
    "default_signature_path",
    "load_signature",
    "sign",
    "sigstore_available",
    "verify",
]
