"""The scanner against the loaders' own parsers (tests/scanner/oracle).

Each family of parser differential is rebuilt here from what the real parser does: the
oracle shows the real unpickler resolving ``os.system`` (a stub stands in for it), the
``fire`` fixture shows the real loader running a harmless marker payload, and the
scanner must report it. The differential fuzzer then runs derandomized: fixed seeds, a
fixed number of inputs, no differential allowed.
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from tests.scanner.conftest import rules, scan_one
from tests.scanner.oracle import (
    PICKLE_READERS,
    file_differences,
    gen,
    legacy_stream_differences,
    run_real,
    scan_bytes,
    stream_differences,
    streams_differences,
)
from tests.scanner.oracle.counterexamples import (
    COUNTEREXAMPLES,
    LEGACY_COUNTEREXAMPLES,
    LEGACY_TAR_COUNTEREXAMPLES,
)
from tests.scanner.oracle.families import (
    float_nul_pickle,
    frame_split_pickle,
    npy_object,
    safetensors_polyglot,
    torch_zip,
)
from tests.scanner.oracle.fuzz import run_round

SYSTEM = "os.system"


def _real(reader: str, data: bytes) -> list[str]:
    (real,) = run_real([(reader, data)])
    return real.names


def _blocked(data: bytes, *extra: str) -> set[str]:
    report = scan_bytes(data)
    found = rules(report)
    assert report.verdict.value == "unsafe", [f.message for f in report.findings]
    assert "SH100" in found and any(SYSTEM in f.message for f in report.findings)
    for rule in extra:
        assert rule in found
    return found


def test_frame_split_torch_zip(tmp_path: Path, fire: object) -> None:
    """Family 1: torch.load (C unpickler on a BytesIO) drops the rest of a split frame."""
    data = torch_zip(frame_split_pickle())
    assert _real("torch_zip", data) == [SYSTEM]
    # Read from memory, the same stream is a harmless bytes object: the differential.
    assert _real("c_bytes", frame_split_pickle()) == []
    _blocked(data, "SH160")
    path = tmp_path / "model.pt"
    path.write_bytes(torch_zip(frame_split_pickle(arg="touch framesplit")))
    assert "framesplit" in fire([(path, "torch")])  # type: ignore[operator]
    assert "SH160" in rules(scan_one(path))


def test_stop_inside_a_frame_moves_the_next_record() -> None:
    """After STOP inside a frame, _pickle.c reading a file leaves the file at the frame's
    end: the next load() (torch's legacy streams, readers that read on) starts there."""
    inner = b"N.cos\nsystem\n."
    data = (b"\x80\x04\x95" + len(inner).to_bytes(8, "little") + inner
            + b"cbuiltins\neval\n.")
    (real,) = run_real([("c_file_all", data)])
    assert [r.end for r in real.records] == [11 + len(inner), len(data)]
    assert real.names == ["builtins.eval"]
    assert streams_differences(data, real) == []
    found = rules(scan_bytes(data))
    assert {"SH160", "SH112", "SH100"} <= found


def test_frame_split_deflated_record_is_read_both_ways() -> None:
    data = torch_zip(frame_split_pickle(), compress=True)
    assert _real("torch_zip", data) == [SYSTEM]
    _blocked(data, "SH160")


def test_float_with_nul(tmp_path: Path, fire: object) -> None:
    """Family 2: FLOAT+NUL is accepted by _pickle.c, rejected by Python's float()."""
    data = float_nul_pickle()
    assert _real("c_file", data) == [SYSTEM]
    assert _real("py", data) == []  # joblib's unpickler stops there
    _blocked(data)
    _blocked(torch_zip(data, compress=True))
    _blocked(npy_object(data))
    path = tmp_path / "f.pkl"
    path.write_bytes(float_nul_pickle(arg="touch floatnul"))
    assert "floatnul" in fire([(path, "pickle")])  # type: ignore[operator]


def test_safetensors_that_is_also_a_pickle(tmp_path: Path, fire: object) -> None:
    """A valid safetensors file whose header length and padding are a FLOAT+NUL pickle."""
    data = safetensors_polyglot()
    assert _real("c_file", data) == [SYSTEM]
    _blocked(data, "SH114")
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_polyglot(arg="touch stpoly"))
    assert "stpoly" in fire([(path, "safetensors"), (path, "pickle")])  # type: ignore[operator]


def test_tar_whose_first_header_is_a_pickle(tmp_path: Path, fire: object) -> None:
    """A tar (torch's legacy container) whose first header, read from byte 0, is FLOAT+NUL:
    the FLOAT line runs to the member's first byte, the rest of the member is the call."""
    call = float_nul_pickle(arg="touch tarpoly")[len(b"\x80\x04F1.0\x00\n"):]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("F1")
        member = b"\n" + call
        info.size = len(member)
        tf.addfile(info, io.BytesIO(member))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.getnames() == ["F1"]
    assert _real("c_file", data) == [SYSTEM]
    report = scan_bytes(data)
    assert report.verdict.value == "unsafe"
    assert any(SYSTEM in f.message for f in report.findings)
    path = tmp_path / "legacy.tar"
    path.write_bytes(data)
    assert "tarpoly" in fire([(path, "pickle")])  # type: ignore[operator]


_TEXT_OPS = [(b"F", gen.FLOATS), (b"I", gen.INTS), (b"L", gen.LONGS), (b"S", gen.STRINGS),
             (b"V", gen.UNICODES), (b"Np", gen.MEMO), (b"Np0\ng", gen.MEMO),
             (b"NP", [b"x", b"\xff", b""])]


def _text_cases() -> list[bytes]:
    marker = b"\x8c\x02os\x8c\x06system\x93."
    cases = []
    for op, tokens in _TEXT_OPS:
        for token in tokens:
            cases.append(op + token + b"\n0" + marker)
            cases.append(b"\x80\x04" + op + token + b"\n0" + marker)
    for variant in gen.LINE_VARIANTS:
        cases.append(b"cos" + variant + b"\nsystem\n.")
        cases.append(b"cos\nsystem" + variant + b"\n.")
        cases.append(b"(ios" + variant + b"\nsystem\n.")
        cases.append(b"ios\nsystem" + variant + b"\n.")
    cases += [b"cos\nsystem", b"cos\nsystemX", b"cos\n", b"c", b"\x80\x02cos\nsystem\x00\n."]
    return cases


def test_text_arguments_parse_as_every_reader_parses_them() -> None:
    """Every syntax corner of every text-argument opcode, in all three pickle readers."""
    cases = _text_cases()
    items = [(reader, data) for data in cases for reader in PICKLE_READERS]
    problems = []
    for (reader, data), real in zip(items, run_real(items), strict=True):
        problems += [f"{data!r}: {d}" for d in stream_differences(reader, data, real)]
    assert not problems, "\n".join(problems)


_COUNTED = [b"X%(4)s", b"\x8c%(1)s", b"\x8d%(8)s", b"B%(4)s", b"C%(1)s", b"\x8e%(8)s",
            b"\x96%(8)s", b"T%(4)s", b"U%(1)s", b"\x8a%(1)s", b"\x8b%(4)s", b"J\x01\x02\x03",
            b"M\x01\x02", b"G" + b"\x00" * 8, b"h\x00", b"j\x00\x00\x00\x00",
            b"r\x01\x00\x00\x00", b"\x95%(8)s", b"I12345\n", b"cos\nsystem\n", b"g0\n"]


def _frame_cases() -> list[bytes]:
    """Every argument kind, with a frame that ends at each byte inside the opcode."""
    call = b"\x8c\x02os\x8c\x06system\x93\x8c\x01x\x85R"
    cases = []
    for template in _COUNTED:
        for width in (1, 4, 8):
            template = template.replace(b"%%(%d)s" % width,
                                        (4).to_bytes(width, "little") + b"ab\x00c")
        op = b"N\x94" + template
        for cut in range(1, len(op)):
            inner = op[:cut]
            frame = b"\x95" + len(inner).to_bytes(8, "little") + inner
            for after in (b"", b"0"):
                cases.append(b"\x80\x04" + frame + op[cut:] + after + call + b".")
    return cases


def test_frames_cut_inside_every_argument_kind() -> None:
    """Family 1, systematically: a frame ending inside each opcode's argument, read by the
    C unpickler from a file and from bytes and by pickle._Unpickler."""
    items = [(reader, data) for data in _frame_cases() for reader in PICKLE_READERS]
    problems = []
    for (reader, data), real in zip(items, run_real(items), strict=True):
        problems += [f"{data!r}: {d}" for d in stream_differences(reader, data, real)]
    assert not problems, "\n".join(problems[:20])


def test_counterexamples_stay_fixed() -> None:
    items = [(reader, data) for _, data in COUNTEREXAMPLES for reader in PICKLE_READERS]
    problems = []
    for (reader, data), real in zip(items, run_real(items), strict=True):
        problems += [f"{data!r}: {d}" for d in stream_differences(reader, data, real)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seed", [101, 202])
def test_differential_fuzz_fixed_budget(seed: int) -> None:
    """The fuzzer, derandomized: fixed seeds and input counts, zero differentials."""
    outcome = run_round(seed, n=100, containers=16)
    assert outcome.inputs == 116
    assert not outcome.differentials, "\n".join(
        f"{reader} {data!r}: {diffs}" for reader, data, diffs in outcome.differentials)


# --- torch's legacy format, read by torch.load itself (reader "torch_legacy") ------------


def _legacy_tar(members: list[tuple[str, bytes]], size_of: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = (size_of or {}).get(name, len(data))
            tf.addfile(info, io.BytesIO(data.ljust(info.size, b"\0")))
    return buf.getvalue()


def _legacy_members(obj_pickle: bytes) -> list[tuple[str, bytes]]:
    """A legacy tar as torch < 0.1.10 wrote it, with ``obj_pickle`` as its object."""
    storages = (b"K\x01." + gen._STORAGE_RECORD + (2).to_bytes(8, "little") + b"\0" * 8 + b"].")
    tensors = (b"K\x01." + gen._TENSOR_RECORD + (1).to_bytes(4, "little") + b"\0" * 4
               + (2).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"\0" * 8)
    return [("storages", storages), ("tensors", tensors), ("pickle", obj_pickle)]


def test_legacy_tar_is_read_as_torch_reads_it(tmp_path: Path, fire: object) -> None:
    """torch.load's tar path, run for real: every pickle_module.load of the storages and
    tensors members, then its UnpicklerWrapper on the pickle member, in that order."""
    benign = b"\x80\x02}X\x01\x00\x00\x00wP1\ns."  # {"w": the tensor, persistent id 1}
    data = _legacy_tar(_legacy_members(benign))
    (real,) = run_real([("torch_legacy", data)])
    assert [(r.where, r.ok) for r in real.records] == [
        ("storages", True), ("storages", True), ("storages", True),
        ("tensors", True), ("tensors", True), ("pickle", True)]
    assert real.names == ["torch.FloatStorage", "torch.FloatTensor"]
    assert [r.end for r in real.records][:3] == [3, 3 + len(gen._STORAGE_RECORD),
                                                 3 + len(gen._STORAGE_RECORD) + 16 + 2]
    assert scan_bytes(data).verdict.value == "clean"

    hostile = _legacy_tar(_legacy_members(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R."))
    (real,) = run_real([("torch_legacy", hostile)])
    assert real.records[-1].where == "pickle" and real.records[-1].names == [SYSTEM]
    _blocked(hostile)
    path = tmp_path / "legacy.tar"
    path.write_bytes(_legacy_tar(_legacy_members(
        b"\x80\x02cos\nsystem\nX\x0c\x00\x00\x00touch legtar\x85R.")))
    assert "legtar" in fire([(path, "torch")])  # type: ignore[operator]


def test_legacy_raw_stream_records_match_the_scanner() -> None:
    """torch.load's raw legacy stream (tarfile refuses the file): magic number, protocol,
    system info, the object, storage keys; each record bounded where the scanner bounds it."""
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3), "step": 4}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    (real,) = run_real([("torch_legacy", data)])
    assert [r.where for r in real.records] == ["input.pt"] * 5
    assert all(r.ok for r in real.records)
    assert "torch._utils._rebuild_tensor_v2" in real.names
    assert legacy_stream_differences(data, real) == []
    assert scan_bytes(data).verdict.value == "clean"


def test_legacy_tar_extraction_failure_falls_back_to_raw_pickles(tmp_path: Path,
                                                                fire: object) -> None:
    """tarfile opens the file, extracting ``storages`` fails (its data is cut short): torch
    re-reads the file from byte 0 as its raw legacy stream, whose first pickle is the tar
    header (a FLOAT+NUL line through the member name, then the call)."""

    def build(arg: str) -> bytes:
        call = float_nul_pickle(arg=arg)[len(b"\x80\x04F1.0\x00\n"):]
        data = _legacy_tar([("F1", b"\n" + call), ("storages", b"K\x00.")], {"storages": 4000})
        return data[:512 * 3 + 100]

    data = build("echo pwned")
    (real,) = run_real([("torch_legacy", data)])
    assert [(r.where, r.names) for r in real.records] == [("input.pt", [SYSTEM])]
    assert "magic number" in real.records[0].error  # torch ran the call, then gave up
    _blocked(data, "SH114")
    path = tmp_path / "fallback.pt"
    path.write_bytes(build("touch tarfallback"))
    assert "tarfallback" in fire([(path, "torch")])  # type: ignore[operator]


@pytest.mark.parametrize("seed", [303, 404])
def test_differential_fuzz_legacy_containers(seed: int) -> None:
    """The fuzzer's legacy tar and raw-stream containers, derandomized."""
    rng = random.Random(seed)
    items = []
    for _ in range(24):
        pkl = gen.pickle_program(rng)
        if rng.random() < 0.3:
            pkl = gen.mutate(rng, pkl)
        items.append(("torch_legacy", gen.legacy_tar(rng, pkl) if rng.random() < 0.5
                      else gen.legacy_stream(rng, pkl)))
    problems = []
    for (reader, data), real in zip(items, run_real(items), strict=True):
        diffs = file_differences(reader, real, scan_bytes(data))
        diffs += legacy_stream_differences(data, real)
        problems += [f"{data!r}: {d}" for d in diffs]
    assert not problems, "\n".join(problems)


def test_legacy_counterexamples_stay_fixed() -> None:
    """torch.load's raw legacy records where the fuzzer once found the scanner wrong."""
    items = [("torch_legacy", data)
             for data in [*LEGACY_COUNTEREXAMPLES, *LEGACY_TAR_COUNTEREXAMPLES]]
    problems = []
    for (reader, data), real in zip(items, run_real(items), strict=True):
        diffs = file_differences(reader, real, scan_bytes(data))
        diffs += legacy_stream_differences(data, real)
        problems += [f"{data!r}: {d}" for d in diffs]
    assert not problems, "\n".join(problems)
    # A GLOBAL line that a frame cuts: read from memory it is builtins.eval, and the
    # scanner names it beside the file reading's name at the same offset.
    assert "builtins.eval" in {f.subject for f in scan_bytes(LEGACY_COUNTEREXAMPLES[-2]).findings}
    # A computed storages count: torch reads on, and so does the scanner.
    found = {f.subject for f in scan_bytes(LEGACY_TAR_COUNTEREXAMPLES[0]).findings}
    assert {"builtins.eval", "os.path.join"} <= found
    # The last one: the record torch reads after the STOP resolves os.system, and the
    # scanner names it (not only the split frame).
    (real,) = run_real([("torch_legacy", LEGACY_COUNTEREXAMPLES[-1])])
    assert real.records[4].names == [SYSTEM]
    _blocked(LEGACY_COUNTEREXAMPLES[-1], "SH160")
