"""Signatures the policy requires: present, made by a trusted key, and matching the files.

Verification is :mod:`safehub.signing`'s. A Hugging Face snapshot is a folder of links
to blobs, which the verifier refuses to follow (rightly: a link can point anywhere);
its files are handed over as descriptors opened on the blobs the audit resolved and
checked (``open_files``), against an empty folder so that no link is walked.

A result is remembered in the state together with a fingerprint of everything it
depends on (the signature file, the trust anchors, every file's stat key); while
that holds, the folder is not hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safehub._audit.context import Context
from safehub._audit.model import RepoTarget
from safehub._audit.state import State, stat_key
from safehub._audit.walk import walk_files
from safehub._policy.decide import Requirement
from safehub._signing.model import SignedManifest, default_signature_path, load_signature
from safehub._signing.result import Failure, FailureKind, SignatureInvalid, Verification
from safehub._signing.trust import Trust, TrustedCertificates, TrustedKey
from safehub.errors import PolicyError, SafehubError
from safehub.findings import Finding

__all__ = ["signature_findings"]


def _anchors(requirement: Requirement) -> list[Trust]:
    anchors: list[Trust] = []
    for path in requirement.anchors:
        if not os.access(path, os.R_OK):
            raise PolicyError(f"cannot read a trust anchor of {requirement.rule}",
                              subject=path,
                              fix=f"fix the path in the policy's {requirement.rule}")
        anchors.append(TrustedKey.from_path(path) if path in requirement.public_keys
                       else TrustedCertificates.from_paths([path]))
    return anchors


def _fingerprint(repo: RepoTarget, signature: Path, requirement: Requirement) -> str:
    h = hashlib.sha256()
    h.update(repr((requirement.rule, requirement.ignore_unsigned_files)).encode())
    for path in (str(signature), *requirement.anchors):
        try:
            st = os.stat(path)
            h.update(repr((path, stat_key(st))).encode())
        except OSError:
            h.update(f"{path}: missing".encode())
    if repo.members:
        for rel, real in repo.members:
            try:
                h.update(repr((rel, stat_key(os.stat(real, follow_symlinks=False)))).encode())
            except OSError:
                h.update(f"{rel}: missing".encode())
    elif os.path.isdir(repo.path):
        for entry in walk_files(repo.path):
            try:
                st = os.lstat(entry.path)
            except OSError:
                continue
            h.update(repr((entry.rel, entry.kind, stat_key(st))).encode())
    else:
        with contextlib.suppress(OSError):
            h.update(repr(stat_key(os.stat(repo.path))).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _opened(members: tuple[tuple[str, str], ...], skip: str) -> Iterator[dict[str, int]]:
    fds: dict[str, int] = {}
    try:
        for rel, real in members:
            if rel == skip:
                continue
            with contextlib.suppress(OSError):  # unopenable: reported as missing
                fds[rel] = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def _check(signed: SignedManifest, repo: RepoTarget, signature: Path,
           requirement: Requirement) -> Verification:
    if not repo.members:
        return signed.check(repo.path, ignore_unsigned_files=requirement.ignore_unsigned_files)
    rel_sig = os.path.relpath(signature, repo.path).replace(os.sep, "/")
    with tempfile.TemporaryDirectory(prefix="safehub-audit-") as empty, \
            _opened(repo.members, rel_sig) as fds:
        return signed.check(empty, ignore_unsigned_files=requirement.ignore_unsigned_files,
                            open_files=fds)


def _verify(repo: RepoTarget, signature: Path, requirement: Requirement) -> dict[str, Any]:
    failures: tuple[Failure, ...] = ()
    for anchor in _anchors(requirement):
        try:
            signed = load_signature(signature, trust=anchor)
        except SignatureInvalid as exc:
            failures = exc.failures
            continue
        result = _check(signed, repo, signature, requirement)
        return {"signer": result.signer.describe() if result.signer else None,
                "failures": [f.to_json() for f in result.failures]}
    if not failures:
        failures = (Failure(FailureKind.SIGNATURE_INVALID,
                            "no trusted key or certificate verifies the signature"),)
    return {"signer": None, "failures": [f.to_json() for f in failures]}


def signature_findings(repo: RepoTarget, requirement: Requirement, ctx: Context,
                       state: State, *, rescan: bool) -> list[Finding]:
    """Findings for one signature requirement on ``repo`` (none when it verifies)."""
    signature = Path(repo.signature) if repo.signature else default_signature_path(repo.path)
    if not os.path.lexists(signature):
        return [ctx.finding(
            "SH204", f"policy {ctx.policy.name!r} requires a signature ({requirement.rule}, "
            f"scope {requirement.value!r}) and there is none at {signature}", repo.path,
            subject=requirement.rule)]
    fingerprint = _fingerprint(repo, signature, requirement)
    key = f"{os.path.realpath(repo.path)}\x1f{requirement.rule}"
    remembered = state.signatures.get(key)
    if not rescan and remembered is not None and remembered.get("fingerprint") == fingerprint:
        outcome = remembered
    else:
        try:
            outcome = _verify(repo, signature, requirement)
        except SafehubError as exc:
            if isinstance(exc, PolicyError):
                raise
            outcome = {"signer": None, "failures": [Failure(
                FailureKind.SIGNATURE_INVALID, f"cannot verify: {exc.message}").to_json()]}
        outcome = {**outcome, "fingerprint": fingerprint}
        state.signatures[key] = outcome
    findings = []
    for failure in outcome.get("failures", []):
        rel = failure.get("path")
        where = repo.path if rel in (None, ".") else os.path.join(repo.path, str(rel))
        text = f"signature {signature.name}: {failure.get('message')}"
        if failure.get("expected") or failure.get("actual"):
            text += f" (expected {failure.get('expected')}, actual {failure.get('actual')})"
        findings.append(ctx.finding(str(failure.get("rule_id")), text, where,
                                    subject=str(failure.get("kind"))))
    return findings
