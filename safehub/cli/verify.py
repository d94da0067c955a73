"""``safehub verify MODEL``: check a model against its OpenSSF Model Signing signature.

Exit 0 verified, 1 not verified (stderr names each file, digest and the key), 2 on
error (missing model, key or signature file; bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from safehub._format.escape import escape_line as _e
from safehub._format.escape import json_clean
from safehub.cli._common import (
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    ProgressLine,
    emit,
    use_color,
)
from safehub.errors import InternalError
from safehub.signing import (
    Failure,
    SigstoreIdentity,
    Trust,
    TrustedCertificates,
    TrustedKey,
    Verification,
    default_signature_path,
    verify,
)

__all__ = ["register", "run"]

log = logging.getLogger("safehub")
SCHEMA_VERSION = "1"
HELP = "verify a model against its OpenSSF Model Signing (model.sig) signature"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help=HELP, description=HELP + (
        ". Exit 0 when verified, 1 when not (what failed goes to stderr), 2 on error."))
    p.add_argument("model", metavar="MODEL", help="model folder, or a single model file")
    p.add_argument("--signature", metavar="SIG",
                   help="signature file (default: MODEL/model.sig, or MODEL.sig beside a file)")
    trust = p.add_mutually_exclusive_group(required=True)
    # model_signing's spellings (--public_key, --certificate_chain) are accepted too.
    trust.add_argument("--key", "--public-key", "--public_key", dest="key", metavar="PUB",
                       help="trusted EC public key (PEM)")
    trust.add_argument("--certificate-chain", "--certificate_chain", dest="certificate_chain",
                       action="append", metavar="PEM",
                       help="trusted CA certificate(s) (PEM); repeatable")
    trust.add_argument("--sigstore-identity", metavar="ID",
                       help="keyless: the signer's identity (needs safehub[sigstore] and "
                            "--sigstore-issuer)")
    p.add_argument("--sigstore-issuer", metavar="URL", help="keyless: the OIDC issuer")
    p.add_argument("--ignore-unsigned-files", "--ignore_unsigned_files",
                   dest="ignore_unsigned_files", action="store_true", help=(
        "as model_signing: do not fail on files the signature does not cover, code "
        "included (each ignored code file is warned about)"))
    p.add_argument("--ignore-path", action="append", default=[], metavar="PATH",
                   help="model-relative path to skip when unsigned (code still fails); "
                        "repeatable")
    p.add_argument("--ignore-git-paths", action=argparse.BooleanOptionalAction, default=True,
                   help="as model_signing: skip the top-level .git, .gitattributes, .github "
                        "and .gitignore (default); --no-ignore-git-paths checks them")
    group = p.add_argument_group("output")
    group.add_argument("-f", "--format", choices=["text", "json"], default="text",
                       help="report format (default: text)")
    group.add_argument("-o", "--output", metavar="FILE",
                       help="write the report to FILE instead of stdout")
    p.set_defaults(run=run)


def _trust(args: argparse.Namespace) -> Trust | None:
    if args.sigstore_issuer and not args.sigstore_identity:
        log.error("--sigstore-issuer goes with --sigstore-identity")
        return None
    if args.key:
        return TrustedKey.from_path(args.key)
    if args.certificate_chain:
        return TrustedCertificates.from_paths(args.certificate_chain)
    if not args.sigstore_issuer:
        log.error("--sigstore-identity needs --sigstore-issuer")
        return None
    return SigstoreIdentity(identity=args.sigstore_identity, issuer=args.sigstore_issuer)


def _describe(result: Verification, failure: Failure, *, with_values: bool = True) -> str:
    # A single-file model's only resource is named "."; show the file instead.
    where = "signature" if failure.path is None else \
        result.model if failure.path == "." else failure.path
    text = f"{failure.rule_id} {failure.kind.value} {_e(where)}: {_e(failure.message)}"
    if with_values and (failure.expected is not None or failure.actual is not None):
        text += f" (expected {_e(failure.expected)}, actual {_e(failure.actual)})"
    return text


def _text(result: Verification, trusted: str, verbose: bool, color: bool) -> str:
    ok = result.ok
    mark = ("\x1b[32mverified\x1b[0m" if ok else "\x1b[31mNOT verified\x1b[0m") if color \
        else ("verified" if ok else "NOT verified")
    lines = [f"{mark}: {_e(result.model)}", f"  signature: {_e(result.signature)}",
             f"  trusted: {_e(trusted)}"]
    if result.signer is not None:
        lines.append(f"  signed by: {_e(result.signer.describe())}")
    lines.append(f"  files verified: {len(result.files)}")
    if verbose:
        lines.extend(f"    {_e(path)}  {_e(digest)}"
                     for path, digest in sorted(result.files.items()))
        lines.extend(f"  skipped: {_e(path)}" for path in result.skipped)
    lines.extend(f"  unsigned, ignored: {_e(path)}" for path in result.unsigned_ignored)
    for failure in result.failures:
        lines.append(f"  {_describe(result, failure, with_values=False)}")
        if failure.expected is not None or failure.actual is not None:
            lines.append(f"      expected {_e(failure.expected)}")
            lines.append(f"      actual   {_e(failure.actual)}")
    return "\n".join(lines) + "\n"


def _json(result: Verification, trusted: str) -> str:
    body = {"schema_version": SCHEMA_VERSION, "command": "verify", "trusted": trusted,
            **result.to_json()}
    return json.dumps(json_clean(body), indent=2) + "\n"


def run(args: argparse.Namespace) -> int:
    anchor = _trust(args)
    if anchor is None:
        return EXIT_ERROR
    model = Path(args.model)
    signature = Path(args.signature) if args.signature else default_signature_path(model)
    progress = ProgressLine("hashing")
    result = verify(model, signature=signature, trust=anchor,
                    ignore_unsigned_files=args.ignore_unsigned_files,
                    unsafe_ignore_unsigned_code=args.ignore_unsigned_files,
                    ignore_paths=args.ignore_path, ignore_git_paths=args.ignore_git_paths,
                    progress=progress)
    progress.done()
    trusted = anchor.describe()
    if args.format == "json":
        emit(_json(result, trusted), args)
    else:
        emit(_text(result, trusted, args.verbose, use_color(sys.stdout) and not args.output),
              args)
    for path in result.unsigned_ignored:
        log.warning("unsigned file ignored (--ignore-unsigned-files): %s", path)
    if result.ok:
        if result.signer is None:
            raise InternalError("verified signature without a signer")
        log.info("verified %s: %d files signed by %s", result.model, len(result.files),
                 result.signer.describe())
        return EXIT_OK
    log.error("NOT verified: %s (signature %s, trusted %s)", result.model, result.signature,
              trusted)
    if result.signer is not None:
        log.error("  signed by: %s", result.signer.describe())
    for failure in result.failures:
        log.error("  %s", _describe(result, failure))
    return EXIT_FINDINGS
