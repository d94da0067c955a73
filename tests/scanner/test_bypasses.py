"""One regression test per known scanner bypass (as fickling's test/test_bypasses.py).

Public bypasses of picklescan, modelscan, fickling and modelaudit are reproduced by files in
the attack catalogue (``_attacks.py``; test_attacks.py shows each one fires when loaded).
Bypasses found in safehub itself while hardening it come with their own file here, a proof
that it fires, and the finding that now blocks it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner._attacks import BY_ID
from tests.scanner.conftest import rules, scan_one

# (advisory or report, attack id in the catalogue, rules that must block it)
PUBLIC = [
    ("picklescan #22 (CTF): STACK_GLOBAL operands from the memo", "stack_global_via_memo"),
    ("picklescan #14: MEMOIZE mixed with BINPUT", "stack_global_memoize_mixed_with_put"),
    ("GHSA-9gvj-pp9x-gcfr: STACK_GLOBAL fed by STRING opcodes",
     "stack_global_fed_by_string_opcodes"),
    ("GHSA-49gj-c84q-6qm9: cProfile.run", "cprofile_run"),
    ("GHSA-vqmv-47xg-9wpr: pty.spawn", "pty_spawn"),
    ("GHSA-v7x6-rv5q-mhwc: timeit.timeit", "timeit"),
    ("GHSA-vvpj-8cmc-gx39: pkgutil.resolve_name", "pkgutil_resolve_name"),
    ("GHSA-84r2-jw7c-4r5q: operator.methodcaller + pydoc.locate",
     "operator_methodcaller_pydoc"),
    ("GHSA-vr7h-p6mm-wpmh: torch.jit execWrapper", "torch_jit_execwrapper"),
    ("picklescan #66: importlib.import_module chains", "importlib_import_module"),
    ("fickling GHSA-565g-hwwr-4pp3: marshal + types.FunctionType", "marshal_function_type"),
    ("fickling GHSA-q5qq-mvfm-j35x: ctypes via getattr", "ctypes_libc_system"),
    ("fickling GHSA-q5qq-mvfm-j35x: code.InteractiveInterpreter", "code_interactive_interpreter"),
    ("fickling GHSA-q5qq-mvfm-j35x: multiprocessing.util.spawnv_passfds",
     "multiprocessing_spawnv_passfds"),
    ("fickling GHSA-wfq2-52f7-7qvj: runpy", "runpy_run_code"),
    ("fickling AST-vanishing: result discarded with POP", "reduce_result_discarded_with_pop"),
    ("CVE-2025-1716: pip.main", "pip_main"),
    ("CVE-2026-56304: logging.FileHandler", "logging_filehandler"),
    ("picklescan malicious22: numpy.testing runstring", "numpy_testing_runstring"),
    ("nullifAI (ReversingLabs 2025): payload, then a broken stream", "broken_pickle_nullifai"),
    ("CVE-2025-1944: local header name differs from the central directory",
     "torchzip_local_name_mismatch"),
    ("CVE-2025-1945: encrypted flag bit in the local header", "torchzip_encrypted_flag_local_only"),
    ("CVE-2025-10156: zip CRC mismatch torch ignores", "torchzip_bad_crc"),
    ("GHSA-769v-p64c-89pr: checkpoint records under any name", "torchzip_any_record_prefix"),
    ("picklescan pytorch_magic_bypass: legacy magic number computed by eval",
     "legacy_magic_via_eval"),
    ("protocol-2 module rename __builtin__ -> builtins", "builtin_eval_py2_spelling"),
    ("computed import through an allowlisted function (_codecs.encode rot13)",
     "computed_name_rot13"),
    ("copyreg extension registry (EXT4)", "extension_registry_ext4"),
    # Found in safehub while writing these tests (each fixed in safehub/_scanner):
    ("safehub: npz end record with a decoy directory before it", "npz_decoy_end_record"),
    ("safehub: npz records beyond the end record's count", "npz_member_beyond_entry_count"),
    ("safehub: npz member compressed with bzip2 / lzma", "npz_bzip2_member"),
    ("safehub: npz member compressed with lzma", "npz_lzma_member"),
    ("safehub: tar name field read as a pickle by pickle.load", "tar_name_field_is_a_pickle"),
    ("safehub: torch tar whose pickle member is a hard link", "tar_pickle_member_is_hard_link"),
    ("safehub: torch tar in v7 format (no ustar magic)", "tar_v7_without_magic"),
    ("safehub: a valid safetensors file that is also a pickle", "safetensors_that_is_a_pickle"),
    ("safehub: joblib 'ZF' files whose length field lacks 0x", "joblib_old_zf_format"),
]


@pytest.mark.parametrize(("advisory", "attack_id"), PUBLIC, ids=[p[1] for p in PUBLIC])
def test_known_bypass_is_blocked(advisory: str, attack_id: str, tmp_path: Path) -> None:
    attack = BY_ID[attack_id]
    path = tmp_path / f"{attack_id}{attack.suffix}"
    path.write_bytes(attack.build(tmp_path, attack_id))
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE, advisory
    assert attack.rules <= rules(report), advisory


def test_modelscan_85_build_then_dotted_global(tmp_path: Path) -> None:
    """modelscan #85: BUILD writes attributes onto an imported function, and a protocol-4
    dotted name reads them back as STACK_GLOBAL operands."""
    data = (b"\x80\x05" + B.global_op("torch._utils", "_rebuild_tensor") + b"N}("
            + B.binunicode("a") + B.binunicode("os") + b"u\x86b0"
            + B.global_op("torch._utils", "_rebuild_tensor.a") + B.binunicode("system")
            + b"\x93" + B.binunicode("id") + b"\x85R.")
    report = scan_one(B.write(tmp_path / "m.pkl", data))
    assert {"SH105", "SH100", "SH102"} <= rules(report)


# --- joblib desyncs (only reachable once a policy allows joblib's array wrapper) -----------

WRAPPER = ScanOptions(allowed_globals=("joblib.numpy_pickle.NumpyArrayWrapper",))


def _dtype(descr: str, elsize: int = -1, flags: int = 0) -> bytes:
    """``numpy.dtype(descr, False, True)`` with the state numpy's __reduce__ writes."""
    endian = "<" if descr[0] in "fiuc" and descr not in ("u1", "i1") else "|"
    return (B.global_op("numpy", "dtype") + B.string_op(descr) + b"\x89\x88\x87R"
            + b"(K\x03" + B.string_op(endian) + b"NNN" + b"J" + struct.pack("<i", elsize)
            + b"J" + struct.pack("<i", -1) + b"J" + struct.pack("<i", flags) + b"tb")


def _wrapper(descr: str, n: int, **dtype_kw: int) -> bytes:
    """A NumpyArrayWrapper record (protocol 2) for a 1-d array of ``n`` elements, built."""
    return (B.global_op("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81}("
            + B.string_op("subclass") + B.global_op("numpy", "ndarray")
            + B.string_op("shape") + b"J" + struct.pack("<i", n) + b"\x85"
            + B.string_op("order") + B.string_op("C")
            + B.string_op("dtype") + _dtype(descr, **dtype_kw)
            + B.string_op("allow_mmap") + b"\x89" + b"ub")


def test_wrapper_record_shape_matches_what_joblib_reads(tmp_path: Path) -> None:
    data = b"\x80\x02" + _wrapper("u1", 3) + b"abc" + b"."
    path = B.write(tmp_path / "ok.joblib", data)
    import joblib

    assert list(joblib.load(path)) == [97, 98, 99]
    assert scan_one(path, WRAPPER).verdict is Verdict.CLEAN


def _nested_wrapper(marker: str) -> bytes:
    # The object array's nested stream is read by a plain pickle Unpickler: a wrapper
    # record in it is an ordinary object, and the bytes after it are opcodes.
    payload = b"0" + B.call_prefix(marker)
    inner = b"\x80\x02" + _wrapper("u1", len(payload)) + payload + b"N."
    return b"\x80\x02" + _wrapper("O8", 1, flags=63) + inner + b"."


def _frame_past_array(marker: str) -> bytes:
    # joblib's Python unpickler buffers a whole FRAME: the array is read from after it, and
    # the frame's remaining bytes (the payload) run afterwards.
    payload = b"0" + B.call_prefix(marker)
    framed = _wrapper("u1", len(payload)) + payload
    region = b"0" + b"N" * (len(payload) - 1)
    return (b"\x80\x04\x95" + struct.pack("<Q", len(framed)) + framed + region + b"N.")


def _elsize_lie(marker: str) -> bytes:
    # numpy takes a pickled dtype's element size only for flexible kinds: 'f8' stays 8 bytes.
    payload = b"0" + B.call_prefix(marker)
    region = b"\x00" + b"B" + struct.pack("<I", 2 + len(payload)) + b"\x00\x00"
    return b"\x80\x02" + _wrapper("f8", 1, elsize=1) + region + payload + b"N."


@pytest.mark.parametrize("build", [_nested_wrapper, _frame_past_array, _elsize_lie],
                         ids=["nested-wrapper", "frame-past-array", "dtype-elsize"])
def test_joblib_array_desync(build: object, tmp_path: Path, fire: object) -> None:
    path = B.write(tmp_path / "evil.joblib", build("desync"))  # type: ignore[operator]
    assert "desync" in fire([(path, "joblib")]), "joblib runs the hidden opcodes"  # type: ignore[operator]
    report = scan_one(path, WRAPPER)
    assert report.verdict is Verdict.UNSAFE
    assert rules(report) & {"SH100", "SH110"}


def test_joblib_wrapper_made_by_a_factory_counts_as_an_array(tmp_path: Path) -> None:
    """joblib tests isinstance(): an instance made by copyreg._reconstructor reads data too."""
    data = (b"\x80\x02" + B.global_op("copyreg", "_reconstructor")
            + B.global_op("joblib.numpy_pickle", "NumpyArrayWrapper")
            + B.global_op("builtins", "object") + b"N\x87R" + b"}(" + B.string_op("subclass")
            + B.global_op("numpy", "ndarray")
            + B.string_op("shape") + b"K\x03\x85" + B.string_op("order") + B.string_op("C")
            + B.string_op("dtype") + _dtype("u1") + b"ub" + b"\xff\xff\xff" + b".")
    opts = ScanOptions(allowed_globals=("joblib.numpy_pickle.NumpyArrayWrapper",
                                        "copyreg._reconstructor", "builtins.object"))
    report = scan_one(B.write(tmp_path / "f.joblib", data), opts)
    # The three 0xff bytes are array data, not an invalid opcode.
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]


def test_pickle_loads_joblib_array_bytes_as_opcodes(tmp_path: Path, fire: object) -> None:
    """Plain pickle.load does not skip joblib's array bytes: a region that imports is found."""
    region = B.call_prefix("arrbytes")
    data = b"\x80\x02" + _wrapper("u1", len(region)) + region + b"."
    path = B.write(tmp_path / "poly.joblib", data)
    assert "arrbytes" in fire([(path, "pickle")])  # type: ignore[operator]
    report = scan_one(path, WRAPPER)
    assert report.verdict is Verdict.UNSAFE
    assert {"SH114", "SH100"} <= rules(report)


def _aligned_wrapper(descr: str, n: int) -> bytes:
    """A wrapper record that says its data is aligned (joblib >= 1.2 writes a padding
    length byte, then that many padding bytes, before the data)."""
    return _wrapper(descr, n).replace(
        B.string_op("allow_mmap") + b"\x89" + b"ub",
        B.string_op("allow_mmap") + b"\x89" + B.string_op("numpy_array_alignment_bytes")
        + b"K\x10" + b"ub")


def test_array_bytes_resume_the_stack_plain_pickle_load_sees(tmp_path: Path,
                                                            fire: object) -> None:
    """pickle.load reads array bytes as opcodes *continuing* the stream: a region starting with
    POP (which pops the wrapper) fails a fresh-stream probe but runs under pickle.load."""
    region = b"0" + B.call_prefix("popfirst") + b"N"
    data = b"\x80\x02" + _wrapper("u1", len(region)) + region + b"."
    path = B.write(tmp_path / "popfirst.joblib", data)
    assert "popfirst" in fire([(path, "pickle")])  # type: ignore[operator]
    report = scan_one(path, WRAPPER)
    assert report.verdict is Verdict.UNSAFE
    assert {"SH114", "SH100"} <= rules(report)


def test_payload_hidden_in_alignment_padding(tmp_path: Path, fire: object) -> None:
    """joblib skips 'padding' whose length is its first byte; pickle.load runs that byte and
    the padding as opcodes. A padding length of 0x30 (POP) hides a payload in the padding."""
    payload = B.call_prefix("padding")
    pad = payload + b"N" * (0x30 - len(payload))
    assert len(pad) == 0x30
    data = b"\x80\x02" + _aligned_wrapper("u1", 3) + bytes([0x30]) + pad + b"abc" + b"."
    path = B.write(tmp_path / "padding.joblib", data)
    import joblib

    assert list(joblib.load(path)) == [97, 98, 99], "joblib reads a normal array"
    assert "padding" in fire([(path, "pickle")])  # type: ignore[operator]
    report = scan_one(path, WRAPPER)
    assert report.verdict is Verdict.UNSAFE
    assert {"SH114", "SH100"} <= rules(report)
