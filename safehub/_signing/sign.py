"""Producing an OMS signature that the reference ``model_signing`` verifier accepts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from safehub._signing import keys
from safehub._signing.bundle import dump_bundle
from safehub._signing.check import inside_model, is_code, under_prefix
from safehub._signing.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, EnvelopeSignature, pae
from safehub._signing.hashing import hash_files
from safehub._signing.manifest import (
    DEFAULT_IGNORES,
    FileEntry,
    Serialization,
    ignore_form,
)
from safehub._signing.statement import dump_statement
from safehub._signing.tree import walk

__all__ = ["SignError", "build_signature"]


class SignError(ValueError):
    """The model cannot be signed as asked (links, unreadable files, code left out)."""


def build_signature(model: Path, *, private_key: ec.EllipticCurvePrivateKey,
                    certificates: Sequence[x509.Certificate] = (), signature_path: Path,
                    ignore_paths: Collection[str] = (), shard_size: int | None = None,
                    ignore_git_paths: bool = True, max_workers: int | None = None,
                    progress: Callable[[str], None] | None = None) -> tuple[bytes, int]:
    """The bundle bytes signing ``model``, and how many files it covers.

    ``certificates`` is the signing certificate then its chain (certificate method);
    empty for the key method.
    """
    tree = walk(model, skip_top=DEFAULT_IGNORES if ignore_git_paths else ())
    problems = [f"{rel}: {why}" for rel, why in tree.unsafe]
    problems += [f"{rel or '.'}: folder could not be listed ({why})" for rel, why in
                 tree.unreadable]
    if problems:
        raise SignError("refusing to sign a model with entries that cannot be verified: "
                        + "; ".join(problems[:10]))
    ignored = set(DEFAULT_IGNORES) if ignore_git_paths else set()
    if not tree.single_file:
        with contextlib.suppress(ValueError):
            ignored.add(signature_path.resolve().relative_to(model.resolve()).as_posix())
    for raw in ignore_paths:
        # One spelling, as model_signing joins it to the model ("./a//b/" is "a/b"); an
        # absolute path counts where it resolves inside the model, never re-rooted.
        form = ignore_form(raw)
        if form is not None and form.startswith("/"):
            form = inside_model(form, model, tree.single_file)
        if form is None:
            raise SignError(f"ignore path {raw!r} is not a path inside the model")
        ignored.add(form)
    paths = []
    for rel, size in tree.files.items():
        if not tree.single_file and under_prefix(rel, ignored) is not None:
            if is_code(rel):
                raise SignError(f"{rel} is code and would be left unsigned by the ignore "
                                "paths; safehub verifiers refuse unsigned code")
            continue
        if shard_size is not None and ":" in rel and size > 0:
            # A shard is named PATH:START:END and read back split at every colon (by
            # model_signing and by safehub), so no verifier could read this signature.
            raise SignError(f"{rel} has a colon in its name, which a shard signature cannot "
                            "name; sign with the files method (no shard size)")
        paths.append(rel)
    digests = hash_files(model, paths, single_file=tree.single_file, hash_type="sha256",
                         shard_size=shard_size, max_workers=max_workers, progress=progress)
    entries = []
    for rel in paths:
        got = digests[rel]
        if got.error is not None:
            raise SignError(f"{rel}: could not be read: {got.error}")
        if shard_size is None:
            entries.append(FileEntry(rel, digest=got.digest))
        elif got.shards:
            entries.append(FileEntry(rel, shards=got.shards))
        elif is_code(rel):
            raise SignError(f"{rel} is empty code: a shard signature cannot cover an empty "
                            "file and verifiers refuse unsigned code; sign with the files "
                            "method (no shard size)")
    ser = Serialization(method="shards" if shard_size else "files", hash_type="sha256",
                        shard_size=shard_size, allow_symlinks=False,
                        ignore_paths=tuple(sorted(ignored)))
    name = model.name or model.resolve().name
    payload = dump_statement(name, ser, entries)
    public = private_key.public_key()
    sig = private_key.sign(pae(IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(keys.hash_for(public)))
    envelope = Envelope(payload=payload, payload_type=IN_TOTO_PAYLOAD_TYPE,
                        signatures=(EnvelopeSignature(sig=sig, keyid=""),))
    if certificates:
        ders = [c.public_bytes(serialization.Encoding.DER) for c in certificates]
        return dump_bundle(envelope, certificates=ders), len(paths)
    return dump_bundle(envelope, key_hint=keys.pem_hint(public)), len(paths)
