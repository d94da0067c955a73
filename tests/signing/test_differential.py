"""safehub's verdict against model_signing 1.1.1's on models the reference signed itself.

Generated cases (``tests/signing/differential.py``): layouts (single file, nested
folders, empty files and folders, unicode and odd names, dotfiles, ``.git*`` entries,
links), hashing (SHA-256, BLAKE2, BLAKE3; files or shards of 1 byte to larger than any
file), signer and verifier ignore paths, ``ignore_git_paths``, ``allow_symlinks``, keys
on P-256/P-384 and certificate chains of depth 1 to 3 (and the shared PKI), the
signature inside the model or beside it, ``ignore_unsigned_files``; then a change to
the files or to the bundle, or a rewritten statement signed by the trusted key. Both
tools verify; safehub never verifies what the reference refuses, and refuses what the
reference verifies only for a documented reason (:func:`deliberate`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from safehub.signing import sign, verify
from tests.conftest import SHARED
from tests.signing.differential import (
    Case,
    build_layout,
    cases,
    deliberate,
    deliberate_failures,
    make_signer,
    profile_signer,
    reference_sign,
    reference_verify,
    run_case,
    safehub_verify,
)

model_signing = pytest.importorskip("model_signing", reason="model-signing (dev extra) missing")
pytest.importorskip("OpenSSL", reason="pyOpenSSL (dev extra) missing")

_SHARED_SIGNING = SHARED / "signing"


def _shared() -> Path | None:
    return _SHARED_SIGNING if (_SHARED_SIGNING / "pki" / "ca.pem").is_file() else None


def _check(case: Case, where: Path) -> str:
    outcome = run_case(case, where, shared=_shared())
    if outcome.skipped:
        return "skipped"
    why = deliberate(outcome)
    assert outcome.agrees or why, (
        f"{outcome.kind} {case.label()}: reference {outcome.reference} "
        f"({outcome.reference_error}); safehub {outcome.safehub} {outcome.safehub_failures}")
    return "agree" if outcome.agrees else f"deliberate: {why}"


# A hand-picked set that reaches each dimension at least once, so the fast run covers
# what the seeded sweep below covers by chance.
_PICKED = [
    Case(layout="single", mutation="none"),
    Case(layout="single", shard_size=1000, mutation="edit"),
    Case(layout="nested", hash="blake2", shard_size=7, mutation="swap-shards"),
    Case(layout="nested", hash="blake3", mutation="rename"),
    Case(layout="empty", shard_size=256, mutation="add-empty"),
    Case(layout="empty", mutation="truncate"),
    Case(layout="unicode", mutation="none"),
    Case(layout="unicode", mutation="remove", seed=3),
    Case(layout="dotfiles", signer="key-P-384", mutation="add-dotfile"),
    Case(layout="git", ignore_git_paths=False, mutation="edit-git"),
    Case(layout="git", mutation="add-nested-git"),
    Case(layout="symlinks", allow_symlinks=True, mutation="none"),
    Case(layout="big", shard_size=256, ignore_unsigned=True, mutation="add-data"),
    Case(layout="big", shard_size=10_000, mutation="append"),
    Case(layout="nested", ignore_paths=("a/b",), mutation="add-under-ignored"),
    Case(layout="nested", ignore_paths=("a/b/c/deep.bin",), mutation="edit-ignored"),
    Case(layout="nested", verify_ignore=("weights.bin",), mutation="none"),
    Case(layout="nested", sig_inside=True, sig_recorded=False, mutation="none"),
    Case(layout="nested", ignore_unsigned=True, mutation="add-symlink"),
    Case(layout="nested", signer="cert-1", mutation="drop-intermediate"),
    Case(layout="nested", signer="cert-3", mutation="reverse-chain"),
    Case(layout="nested", signer="cert-3-root", mutation="extra-cert"),
    Case(layout="nested", signer="cert-shared", mutation="none"),
    Case(layout="nested", mutation="sig-flip"),
    Case(layout="nested", mutation="media-type-0.2"),
    Case(layout="nested", mutation="other-hint"),
    Case(layout="nested", mutation="second-signature"),
    Case(layout="nested", mutation="statement-v0.1"),
    Case(layout="nested", mutation="duplicate-resource"),
    Case(layout="nested", mutation="ignore-add-all"),
    Case(layout="nested", mutation="digest-uppercase"),
    Case(layout="nested", hash="blake2", mutation="hash-type-alias"),
    Case(layout="big", shard_size=256, mutation="shard-size-float"),
    Case(layout="nested", mutation="compat-predicate"),
]


@pytest.mark.parametrize("case", _PICKED, ids=lambda c: c.label())
def test_picked_cases_agree(tmp_path: Path, case: Case) -> None:
    logging.disable(logging.WARNING)
    try:
        _check(case, tmp_path)
    finally:
        logging.disable(logging.NOTSET)


def test_a_seeded_sample_agrees(tmp_path: Path) -> None:
    """Forty generated cases (the same forty on every run)."""
    seen = {}
    for i, case in enumerate(cases(40, seed=7)):
        seen[case.label()] = _check(case, tmp_path / str(i))
    assert sum(v == "agree" for v in seen.values()) >= 15, seen


def test_the_cli_agrees_too(tmp_path: Path) -> None:
    """``safehub verify`` (exit 0 or 1, never 2) on thirty generated cases: it never
    verifies what the reference refuses, and refuses what it verifies only for a
    documented reason. (Its --ignore-unsigned-files lets unsigned code through with a
    warning, as the reference does; the library does not.)"""
    logging.disable(logging.WARNING)
    try:
        for i, case in enumerate(cases(30, seed=8)):
            outcome = run_case(case, tmp_path / str(i), shared=_shared(), cli=True)
            if outcome.skipped:
                continue
            assert outcome.cli is not None
            if outcome.cli:
                assert outcome.reference, (case.label(), outcome.reference_error)
            elif outcome.reference:
                assert deliberate_failures(outcome.cli_failures), (
                    case.label(), outcome.cli_failures)
    finally:
        logging.disable(logging.NOTSET)


_SERVER = ExtendedKeyUsageOID.SERVER_AUTH


@pytest.mark.parametrize(("name", "root", "inter", "leaf", "reference_ok", "safehub_ok"), [
    ("as issued", {}, {}, {}, True, True),
    ("intermediate basicConstraints not critical, no keyUsage", {},
     {"bc": (True, False), "ku": None}, {}, True, True),
    ("leaf without basicConstraints", {}, {}, {"bc": None}, True, True),
    ("leaf basicConstraints not critical", {}, {}, {"bc": (False, False)}, True, True),
    ("intermediate without basicConstraints", {}, {"bc": None}, {}, False, False),
    ("intermediate CA:FALSE", {}, {"bc": (False, True)}, {}, False, False),
    ("root CA:FALSE", {"bc": (False, True)}, {}, {}, False, False),
    ("root without basicConstraints or keyUsage", {"bc": None, "ku": None}, {}, {},
     False, False),
    ("root pathlen 0 over an intermediate", {"pathlen": 0}, {}, {}, False, False),
    ("unknown critical extension in the leaf", {}, {}, {"unknown_critical": True},
     False, False),
    ("unknown critical extension in the intermediate", {}, {"unknown_critical": True}, {},
     False, False),
    ("leaf with neither keyUsage nor extendedKeyUsage", {}, {}, {"ku": None, "eku": None},
     False, False),
    # safehub refuses more, on purpose (SECURITY.md): a leaf stated for other uses, a CA
    # as the signer, and a trusted root without basicConstraints (cryptography's verifier
    # requires it of every CA; OpenSSL takes a root whose keyUsage allows keyCertSign).
    ("leaf keyUsage digitalSignature, extendedKeyUsage serverAuth only", {}, {},
     {"eku": [_SERVER]}, True, False),
    ("leaf CA:TRUE", {}, {}, {"bc": (True, True)}, True, False),
    ("root without basicConstraints, keyUsage keyCertSign", {"bc": None}, {}, {},
     True, False),
])
def test_certificate_profiles(tmp_path: Path, name: str, root: dict[str, object],
                              inter: dict[str, object], leaf: dict[str, object],
                              reference_ok: bool, safehub_ok: bool) -> None:
    """Chains whose certificates carry other extensions: each tool's verdict, pinned."""
    import random

    signer = profile_signer(tmp_path / "pki", root, inter, leaf)
    model = build_layout(tmp_path / "tree", "nested", random.Random(0))
    reference_sign(model_signing, Case(), model, model / "model.sig", signer)
    logging.disable(logging.WARNING)
    try:
        ref = reference_verify(model_signing, Case(), model, model / "model.sig", signer)
    finally:
        logging.disable(logging.NOTSET)
    assert ref[0] is reference_ok, ref
    ours = safehub_verify(Case(), model, model / "model.sig", signer)
    assert ours[0] is safehub_ok, ours
    assert not (ours[0] and not ref[0])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_a_large_seeded_sweep_agrees(tmp_path: Path, seed: int) -> None:
    """The wide run: 400 generated cases per seed."""
    for i, case in enumerate(cases(400, seed=100 + seed)):
        _check(case, tmp_path / str(i))


# --- regressions found by the generator ---------------------------------------------------

def test_shard_signature_with_ignore_unsigned_files_fails_as_in_the_reference(
        tmp_path: Path) -> None:
    """model_signing 1.1.1 checks only listed resources under ignore_unsigned_files by
    opening each name as a file; a shard is named PATH:START:END, so it refuses every
    sharded model that way, even one left exactly as signed. safehub verified it: it
    must not accept what the reference refuses."""
    for shard_size, mutation in ((256, "none"), (1, "add-data"), (10_000, "none")):
        case = Case(layout="big", shard_size=shard_size, ignore_unsigned=True,
                    mutation=mutation)
        outcome = run_case(case, tmp_path / f"{shard_size}-{mutation}", shared=None)
        assert outcome.reference is False, outcome.reference_error
        assert outcome.safehub is False
        assert [k for k, _p, _m in outcome.safehub_failures] == ["signature-invalid"]
    # Without the option both verify; naming the extra file works in both tools.
    ok = run_case(Case(layout="big", shard_size=256, mutation="add-data",
                       verify_ignore=("added.bin",)), tmp_path / "named", shared=None)
    assert ok.reference is True and ok.safehub is True
    # safehub's own shard signatures behave the same way.
    signer = make_signer(tmp_path / "own-signer", "key-P-256", None)
    model = tmp_path / "own"
    model.mkdir()
    (model / "w.bin").write_bytes(b"x" * 1000)
    sig = sign(model, private_key=signer.private, shard_size=300)
    result = verify(model, public_key=signer.trust_key, ignore_unsigned_files=True)
    assert [f.kind.value for f in result.failures] == ["signature-invalid"]
    assert verify(model, public_key=signer.trust_key).ok
    assert reference_verify(model_signing, Case(shard_size=300, ignore_unsigned=True),
                            model, sig, signer)[0] is False


def test_backslash_in_a_file_name_is_an_ordinary_character(tmp_path: Path) -> None:
    """On POSIX ``back\\slash.bin`` is one file name: the reference signs and verifies
    it, and safehub refused it as an unsafe path. A name that climbs out where a
    backslash separates (``a\\..\\b``) stays refused."""
    case = Case(layout="unicode", mutation="none")
    outcome = run_case(case, tmp_path / "ref", shared=None)
    assert outcome.reference is True and outcome.safehub is True, outcome.safehub_failures
    edited = run_case(Case(layout="unicode", mutation="edit", seed=1), tmp_path / "edit",
                      shared=None)
    assert edited.reference is False and edited.safehub is False
    # safehub signs such a model, and the reference verifies it.
    signer = make_signer(tmp_path / "own-signer", "key-P-256", None)
    model = tmp_path / "own"
    model.mkdir()
    (model / "back\\slash.bin").write_bytes(b"weights")
    sig = sign(model, private_key=signer.private)
    assert verify(model, public_key=signer.trust_key).ok
    assert reference_verify(model_signing, Case(), model, sig, signer)[0] is True
    (model / "a\\..\\b").write_bytes(b"x")
    result = verify(model, public_key=signer.trust_key, ignore_unsigned_files=True)
    assert [(f.kind.value, f.path) for f in result.failures] == [("unsafe-path", "a\\..\\b")]


def test_safehub_refuses_to_shard_sign_a_name_with_a_colon(tmp_path: Path) -> None:
    """safehub wrote a shard signature for ``colon:name.bin`` that no verifier can read
    (shards are named PATH:START:END and split at every colon, by the reference too).
    It now refuses, pointing at the files method, whose signature both tools verify."""
    from safehub.errors import SafehubError

    signer = make_signer(tmp_path / "signer", "key-P-256", None)
    model = tmp_path / "model"
    model.mkdir()
    (model / "colon:name.bin").write_bytes(b"weights")
    (model / "empty:too.bin").write_bytes(b"")  # no shard, nothing to name: fine
    with pytest.raises(SafehubError, match="colon in its name"):
        sign(model, private_key=signer.private, shard_size=4)
    assert not (model / "model.sig").exists()
    (model / "empty:too.bin").unlink()
    sig = sign(model, private_key=signer.private)
    assert verify(model, public_key=signer.trust_key).ok
    assert reference_verify(model_signing, Case(), model, sig, signer)[0] is True
    # Left out by an ignore path, the name does not matter.
    sign(model, private_key=signer.private, shard_size=4, ignore_paths=["colon:name.bin"])


@pytest.mark.parametrize(("spelling", "mutation", "expect"), [
    ("./weights.bin", "none", False),  # a signed file left out: missing in both
    ("a//b/c", "none", False),
    ("weights.bin/", "none", False),
    ("./added.bin", "add-data", True),  # the extra file left out: verifies in both
    ("sub/../added.bin", "add-data", False),  # '..' ignores nothing, in both
])
def test_verifier_ignore_paths_are_read_as_the_reference_reads_them(
        tmp_path: Path, spelling: str, mutation: str, expect: bool) -> None:
    """The caller's ignore paths were checked as written (``./weights.bin`` ignored
    nothing, so safehub verified a file the reference had left out, and failed on an
    extra file the reference ignored); they are now spelled as the signer's are."""
    outcome = run_case(Case(layout="nested", verify_ignore=(spelling,), mutation=mutation),
                       tmp_path, shared=None)
    assert (outcome.reference, outcome.safehub) == (expect, expect), outcome


def test_signer_ignore_paths_are_read_as_the_reference_reads_them(tmp_path: Path) -> None:
    """``sign(ignore_paths=["./a//b/"])`` was refused, and an absolute path was re-rooted
    into the model; the reference signs both (``a/b``, and the absolute path where it lies
    inside the model). An absolute path outside the model, or one that climbs, is refused."""
    from safehub.errors import SafehubError

    signer = make_signer(tmp_path / "signer", "key-P-256", None)
    model = tmp_path / "model"
    model.mkdir()
    (model / "a" / "b").mkdir(parents=True)
    (model / "a" / "b" / "notes.txt").write_text("left out\n")
    (model / "w.bin").write_bytes(b"weights")
    for spelling in ("./a//b/", str(model / "a" / "b")):
        sig = sign(model, private_key=signer.private, signature_path=tmp_path / "model.sig",
                   ignore_paths=[spelling])
        (model / "a" / "b" / "notes.txt").write_text(f"changed for {spelling}\n")
        assert verify(model, signature=sig, public_key=signer.trust_key).ok, spelling
        assert reference_verify(model_signing, Case(), model, sig, signer)[0] is True
    for bad in (str(tmp_path / "elsewhere"), "../outside", "a/../../x"):
        with pytest.raises(SafehubError, match="not a path inside the model"):
            sign(model, private_key=signer.private, signature_path=tmp_path / "x.sig",
                 ignore_paths=[bad])


def test_load_with_a_required_signature_gets_the_same_verdicts(tmp_path: Path) -> None:
    """``safehub.load`` under a policy requiring a signature on a local folder: a model
    the reference signed with a backslash in a data file's name loads (it was refused as
    an unsafe path), and a shard signature under a rule with ignore_unsigned_files is
    refused, as the reference refuses it (it loaded)."""
    import safehub
    from safehub.errors import IntegrityError

    signer = make_signer(tmp_path / "signer", "key-P-256", None)
    models = tmp_path / "models"
    repo = models / "det"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(
        "dependencies = ['torch']\n\ndef linear():\n    import torch\n"
        "    torch.manual_seed(0)\n    return torch.nn.Linear(2, 3)\n")
    (repo / "back\\slash.json").write_text('{"note": 1}\n')

    def policy(ignore_unsigned: bool) -> str:
        path = tmp_path / f"policy-{ignore_unsigned}.toml"
        path.write_text(f'schema = 1\nname = "diff"\nextends = "default"\n'
                        f'[[signatures]]\nscope = "path:{models}/*"\n'
                        f'public_keys = ["{signer.trust_key}"]\n'
                        f'ignore_unsigned_files = {str(ignore_unsigned).lower()}\n')
        return str(path)

    reference_sign(model_signing, Case(), repo, repo / "model.sig", signer)
    state = safehub.load(str(repo), "linear", source="local", policy=policy(False))
    assert state["weight"].shape == (3, 2)
    reference_sign(model_signing, Case(shard_size=16), repo, repo / "model.sig", signer)
    assert safehub.load(str(repo), "linear", source="local",
                        policy=policy(False))["weight"].shape == (3, 2)
    assert reference_verify(model_signing, Case(shard_size=16, ignore_unsigned=True), repo,
                            repo / "model.sig", signer)[0] is False
    with pytest.raises(IntegrityError, match="not signed") as info:
        safehub.load(str(repo), "linear", source="local", policy=policy(True))
    assert "cannot be checked with ignore_unsigned_files" in (info.value.fix or "")
