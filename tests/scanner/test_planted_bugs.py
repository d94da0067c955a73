"""Tests aimed at single-line bugs a review planted in the scanner and that survived.

Each test names the bug it catches. Every one was checked by planting the bug and
watching the test fail (see the commit that added this file).
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest

from safehub._scanner import knowledge
from safehub._scanner.allowlist import DEFAULT_ALLOWED, TORCHSCRIPT_ALLOWED, matches
from safehub._scanner.harmless import DEFAULTDICT_FACTORIES, HARMLESS
from safehub.findings import FileReport, Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions, check_allowable, scan_file
from tests.scanner import _builders as B

GOLDEN = Path(__file__).parent / "golden" / "allowlist.json"


def _scan(data: bytes, options: ScanOptions | None = None, name: str = "x.pkl") -> FileReport:
    return scan_file(io.BytesIO(data), name, options=options)


def _blocking(report: FileReport) -> dict[str, str]:
    return {f.subject: f.rule_id for f in report.findings if f.blocking}


# --- bug: a configured wildcard allows a name rated critical ----------------------------------


@pytest.mark.parametrize(("pattern", "module", "name"), [
    ("numpy.lib.*", "numpy.lib", "format"),  # numpy's .npy reader, which unpickles
    ("torch.jit.*", "torch.jit", "load"),  # runs TorchScript code
    ("torch.utils.*", "torch.utils", "cpp_extension"),  # compiles and loads native code
])
def test_wildcard_never_allows_a_critical_name(pattern: str, module: str, name: str) -> None:
    check_allowable([pattern])  # the wildcard itself is acceptable configuration...
    data = B.global_op(module, name) + B.string_op("x") + b"\x85R."  # name("x")
    report = _scan(data, ScanOptions(allowed_globals=(pattern,)))
    # ...but what it matches that is critical is still reported, and not as allowed.
    assert report.verdict is Verdict.UNSAFE
    finding = next(f for f in report.findings if f.subject == f"{module}.{name}")
    assert finding.rule_id == "SH100" and not finding.allowed_by and finding.blocking


def test_wildcard_allows_what_it_names(tmp_path: Path) -> None:
    data = B.global_op("mypkg.configs", "Settings") + b")\x81."
    report = _scan(data, ScanOptions(allowed_globals=("mypkg.configs.*",)))
    assert report.verdict is Verdict.CLEAN
    assert [f.allowed_by for f in report.findings] == ["options"]


# --- bug: pkg.mod.* matches deeper names -------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("mypkg.mod.Thing", True),
    ("mypkg.mod.sub.Thing", False),  # a submodule's name
    ("mypkg.mod.Thing.method", False),  # an attribute of an attribute
    ("mypkg.modx.Thing", False),  # a sibling module sharing the prefix
    ("mypkg.mod", False),  # the module itself
    ("mypkg.mod.", False),
])
def test_module_wildcard_matches_one_level_only(name: str, expected: bool) -> None:
    assert matches("mypkg.mod.*", name) is expected


def test_module_wildcard_does_not_reach_submodules_in_a_scan() -> None:
    opts = ScanOptions(allowed_globals=("mypkg.mod.*",))
    deeper = B.global_op("mypkg.mod.sub", "Evil") + b")\x81."
    assert _blocking(_scan(deeper, opts)) == {"mypkg.mod.sub.Evil": "SH101"}
    stack = B.binunicode("mypkg.mod") + B.binunicode("sub.Evil") + b"\x93)\x81."
    report = _scan(b"\x80\x04" + stack, opts)
    assert report.verdict is Verdict.UNSAFE
    assert "mypkg.mod.sub.Evil" in _blocking(report)


# --- bug: builtins.getattr (or any code-reaching name) added to the allowlist ----------------


def _snapshot() -> dict[str, object]:
    return {
        "default_allowed": dict(sorted(DEFAULT_ALLOWED.items())),
        "torchscript_allowed": dict(sorted(TORCHSCRIPT_ALLOWED.items())),
        "harmless": dict(sorted(HARMLESS.items())),
        "defaultdict_factories": sorted(DEFAULTDICT_FACTORIES),
    }


def test_allowlist_matches_golden() -> None:
    """Every allowed name with its reason. A change here is a security review: update the
    golden (SAFEHUB_REGEN_GOLDEN=1) only together with the reason for the new name."""
    text = json.dumps(_snapshot(), indent=1, sort_keys=False) + "\n"
    if os.environ.get("SAFEHUB_REGEN_GOLDEN"):
        GOLDEN.write_text(text)
    assert GOLDEN.is_file(), f"missing {GOLDEN}; run with SAFEHUB_REGEN_GOLDEN=1"
    assert json.loads(GOLDEN.read_text()) == _snapshot()


# Allowed names whose *module* the knowledge base rates critical, each with why the name is
# safe: the table rates torch.serialization critical for its loaders.
_CRITICAL_MODULE_EXCEPTIONS = {
    "torch.serialization._get_layout": "maps a layout name to a torch.layout constant",
}


def test_no_allowed_name_is_known_to_reach_code() -> None:
    allowed = {**DEFAULT_ALLOWED, **TORCHSCRIPT_ALLOWED, **HARMLESS}
    for name in sorted(allowed):
        info = knowledge.lookup(name)
        if info is None or name in _CRITICAL_MODULE_EXCEPTIONS:
            continue
        assert info.severity.rank < Severity.HIGH.rank, f"{name} is allowed but rated " \
            f"{info.severity.value}: {info.explanation}"


@pytest.mark.parametrize("name", ["getattr", "setattr", "eval", "exec", "__import__", "open",
                                  "compile", "globals", "vars", "type"])
def test_builtin_resolvers_are_findings_next_to_allowed_names(name: str) -> None:
    """getattr on an allowed class (OrderedDict.fromkeys here): only the builtin is foreign."""
    data = (b"\x80\x02" + B.global_op("builtins", name) + B.global_op("collections", "OrderedDict")
            + B.string_op("fromkeys") + b"\x86R.")
    report = _scan(data)
    assert report.verdict is Verdict.UNSAFE
    assert f"builtins.{name}" in _blocking(report)
    assert f"builtins.{name}" not in DEFAULT_ALLOWED and f"builtins.{name}" not in HARMLESS


# --- bug: the storage-type check (SH106) dropped ------------------------------------------------


def _torch_zip_with(data_pkl: bytes) -> bytes:
    torch = pytest.importorskip("torch")
    members = B.torch_zip_members({"w": torch.ones(2)})
    members = [B.ZipMember(m.name, data_pkl) if m.name.endswith("/data.pkl") else m
               for m in members]
    return B.build_zip(members).data


def _persid(pid_items: bytes) -> bytes:
    """A protocol-2 stream whose value is one persistent id built from ``pid_items``."""
    return b"\x80\x02(" + pid_items + b"tQ."


@pytest.mark.parametrize(("label", "items"), [
    ("type-is-a-string", B.binunicode("storage") + B.binunicode("FloatStorage")
     + B.binunicode("0") + B.binunicode("cpu") + b"K\x02"),
    ("type-is-a-tuple", B.binunicode("storage") + b")" + B.binunicode("0")
     + B.binunicode("cpu") + b"K\x02"),
    ("four-fields", B.binunicode("storage") + B.global_op("torch", "FloatStorage")
     + B.binunicode("0") + B.binunicode("cpu")),
    ("not-storage", B.binunicode("module") + B.global_op("torch", "FloatStorage")
     + B.binunicode("0") + B.binunicode("cpu") + b"K\x02"),
])
def test_malformed_storage_references_are_reported(label: str, items: bytes) -> None:
    report = _scan(_torch_zip_with(_persid(items)), name="w.pt")
    assert report.verdict is Verdict.UNSAFE, label
    assert any(f.rule_id == "SH106" and f.blocking for f in report.findings), label


def test_well_formed_storage_reference_is_clean() -> None:
    items = (B.binunicode("storage") + B.global_op("torch", "FloatStorage") + B.binunicode("0")
             + B.binunicode("cpu") + b"K\x02")
    report = _scan(_torch_zip_with(_persid(items)), name="w.pt")
    assert not [f for f in report.findings if f.rule_id == "SH106"]


def test_persistent_id_in_a_plain_pickle_is_reported() -> None:
    report = _scan(b"\x80\x02" + B.binunicode("anything") + b"Q.")
    assert "SH106" in {f.rule_id for f in report.findings if f.blocking}


# --- bug: __torch__ names skipped outside TorchScript ------------------------------------------


def test_torchscript_class_names_are_findings_in_plain_pickles() -> None:
    data = b"\x80\x02" + B.global_op("__torch__.evil", "Payload") + b")\x81."
    report = _scan(data)
    assert _blocking(report) == {"__torch__.evil.Payload": "SH101"}


def test_torchscript_class_names_are_findings_in_torch_zips() -> None:
    data = b"\x80\x02" + B.global_op("__torch__", "Payload") + b")\x81."
    report = _scan(_torch_zip_with(data), name="w.pt")
    assert report.format == "torch-zip"
    assert "__torch__.Payload" in _blocking(report)


# --- bug: SH107 never reported ----------------------------------------------------------------


@pytest.mark.parametrize("opcodes", [b"\x97", b"\x97\x98"], ids=["next", "readonly"])
def test_out_of_band_buffers_are_reported(opcodes: bytes) -> None:
    data = b"\x80\x05" + opcodes + b"."
    with pytest.raises(pickle.UnpicklingError):  # the real loader needs buffers= for this
        pickle.loads(data)
    assert pickle.loads(data, buffers=[b"abc"]) is not None
    report = _scan(data)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.rule_id == "SH107" and f.blocking for f in report.findings)
