"""``safehub sign MODEL --key PRIV``: write an OpenSSF Model Signing signature.

The signature verifies with ``safehub verify`` and with the reference tool
(``model_signing verify key`` / ``verify certificate``). Exit 0 signed, 2 on error.
"""

from __future__ import annotations

import argparse
import logging
import os

from safehub._format.escape import escape_line
from safehub.cli._common import EXIT_OK, ProgressLine
from safehub.cli._output import write_stdout
from safehub.signing import sign

__all__ = ["register", "run"]

log = logging.getLogger("safehub")
HELP = "sign a model folder or file (OpenSSF Model Signing, writes model.sig)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sign", help=HELP, description=HELP + (
        ". Every file is signed except the standard's .git* entries at the top, the "
        "signature itself and --ignore-path paths (code may not be left out)."))
    p.add_argument("model", metavar="MODEL", help="model folder, or a single model file")
    p.add_argument("--key", required=True, metavar="PRIV",
                   help="EC private key (PEM; P-256, P-384 or P-521)")
    p.add_argument("--certificate-chain", action="append", metavar="PEM",
                   help="signing certificate for the key, then its intermediates (PEM); "
                        "repeatable; selects the certificate method")
    p.add_argument("--signature", metavar="SIG",
                   help="where to write it (default: MODEL/model.sig, or MODEL.sig beside a "
                        "file)")
    p.add_argument("--ignore-path", action="append", default=[], metavar="PATH",
                   help="model-relative path to leave out of the signature; repeatable")
    p.add_argument("--ignore-git-paths", action=argparse.BooleanOptionalAction, default=True,
                   help="as model_signing: leave the top-level .git, .gitattributes, .github "
                        "and .gitignore out (default); --no-ignore-git-paths signs them")
    p.add_argument("--shard-size", type=int, metavar="BYTES",
                   help="hash files in shards of this size (model_signing's shard "
                        "serialization)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = ProgressLine("hashing")
    path = sign(args.model, private_key=args.key, certificate_chain=args.certificate_chain,
                signature_path=args.signature, ignore_paths=args.ignore_path,
                shard_size=args.shard_size, ignore_git_paths=args.ignore_git_paths,
                progress=progress)
    progress.done()
    if not args.quiet:
        write_stdout(f"{escape_line(os.fspath(path))}\n")
        log.info("signed %s -> %s (%s method)", args.model, path,
             "certificate" if args.certificate_chain else "key")
    return EXIT_OK
