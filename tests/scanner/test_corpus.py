"""Every file of the shared corpus is classified as labelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions, scan

# Labels that the files themselves contradict, with the evidence. The scanner is held to
# what the bytes say.
KNOWN_MISLABELS = {
    # Labelled "object array of a python-3 string", but the header says '<f8', shape (2,)
    # and the 16 data bytes are two float64 ones: a plain numeric array with no pickle.
    "realworld/r_numpy_python3_npy.npy": Verdict.CLEAN,
}


# Labelled "needs a policy" when every harmless data class was a finding; they now carry
# only curated harmless classes (SH175: informational by default, blocking under strict).
HARMLESS_BY_DEFAULT = {
    "benign/b_argparse_namespace.pt": Verdict.CLEAN,  # argparse.Namespace
    "benign/b_joblib_numeric.joblib": Verdict.CLEAN,  # joblib's NumpyArrayWrapper
}
KNOWN_MISLABELS.update(HARMLESS_BY_DEFAULT)

STRICT = ScanOptions(block_severity=Severity.INFO)


def _expected(label: str) -> Verdict:
    return Verdict.CLEAN if label == "benign" else Verdict.UNSAFE


def test_corpus_matches_labels(shared_dir: Path) -> None:
    corpus = shared_dir / "corpus"
    samples = json.loads((corpus / "labels.json").read_text())["samples"]
    report = scan([corpus / d for d in ("benign", "malicious", "realworld")])
    by_key = {Path(f.path).relative_to(corpus).as_posix(): f for f in report.files}
    assert set(by_key) == set(samples), "every labelled file is scanned, and nothing else"
    wrong = []
    for key, sample in samples.items():
        expected = KNOWN_MISLABELS.get(key, _expected(sample["label"]))
        got = by_key[key].verdict
        if got is not expected:
            wrong.append(f"{key}: labelled {sample['label']}, scanned {got.value}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("name", "allow"),
    [
        ("benign/b_argparse_namespace.pt",
         ScanOptions(allowed_globals=("argparse.Namespace",), block_severity=Severity.INFO)),
        ("benign/b_joblib_numeric.joblib",
         ScanOptions(allowed_globals=("joblib.numpy_pickle.NumpyArrayWrapper",),
                     block_severity=Severity.INFO)),
        ("realworld/r_numpy_py3_objarr.npy", ScanOptions(allowed_globals=("builtins.range",))),
        ("benign/b_torchscript.pt", ScanOptions(allow_torchscript=True)),
    ],
)
def test_needs_policy_files_pass_once_allowed(shared_dir: Path, name: str,
                                             allow: ScanOptions) -> None:
    path = shared_dir / "corpus" / name
    # Harmless classes pass by default; a strict threshold blocks them until allowed.
    baseline = STRICT if name in HARMLESS_BY_DEFAULT else ScanOptions()
    assert scan(path, options=baseline).files[0].verdict is Verdict.UNSAFE
    allowed = scan(path, options=allow).files[0]
    assert allowed.verdict is Verdict.CLEAN
    assert any(f.allowed_by for f in allowed.findings), "the allowance is visible in the report"
