"""Folder walks fail closed.

A file inside a scanned folder leaves the verdict only when its content is positively
identified as not a model (text, JSON, images, ...) and its name does not announce one.
Unrecognized content is reported "not scanned" (exit 2). FIFOs, sockets and devices are
never opened: a FIFO in a folder, or named directly, must not hang the scan.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub._scanner.nonmodel import identify_non_model
from safehub.findings import Verdict
from safehub.scan import scan
from tests.conftest import CliResult
from tests.scanner import _builders as B

Cli = Callable[..., CliResult]

_UNPICKLE_ERRORS = (pickle.UnpicklingError, ValueError, IndexError, KeyError, EOFError)
PNG = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(40)


def _by_name(report_files: list[dict[str, str]]) -> dict[str, str]:
    return {Path(f["path"]).name: f["verdict"] for f in report_files}


def test_unrecognized_model_bin_never_vanishes(cli: Cli, tmp_path: Path) -> None:
    B.write(tmp_path / "ok.pkl", pickle.dumps([1], 2))
    B.write(tmp_path / "pytorch_model.bin", b"\x00\x01\x02 not any format \xff" * 20)
    r = cli("scan", "-f", "json", tmp_path)
    assert r.code == 2, r.err
    doc = json.loads(r.out)
    assert _by_name(doc["files"]) == {"ok.pkl": "clean", "pytorch_model.bin": "unknown"}


def test_unrecognized_binary_of_any_name_is_not_scanned(cli: Cli, tmp_path: Path) -> None:
    """Not only model names: unknown binary content is never silently dropped."""
    B.write(tmp_path / "weights.dat2", bytes(range(256)) * 4)
    r = cli("scan", "-f", "json", tmp_path)
    assert r.code == 2
    assert _by_name(json.loads(r.out)["files"]) == {"weights.dat2": "unknown"}


def test_positively_identified_non_models_are_skipped(cli: Cli, tmp_path: Path) -> None:
    B.write(tmp_path / "ok.pkl", pickle.dumps([1], 2))
    (tmp_path / "README.md").write_text("# model card\n\nHéllo\tworld\r\n")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "act": "gelu"}))
    B.write(tmp_path / "figure.png", PNG)
    B.write(tmp_path / "paper.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    B.write(tmp_path / "tokenizer.model", _sentencepiece_model())
    r = cli("scan", "-f", "json", tmp_path)
    assert r.code == 0, r.out
    doc = json.loads(r.out)
    assert _by_name(doc["files"]) == {"ok.pkl": "clean"}
    assert {Path(s["path"]).name for s in doc["skipped"]} == {
        "README.md", "config.json", "figure.png", "paper.pdf", "tokenizer.model"}


def test_model_names_are_never_skipped_even_with_text_content(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_text("just some text\n")
    r = cli("scan", "-f", "json", tmp_path)
    assert r.code == 2
    assert _by_name(json.loads(r.out)["files"]) == {"model.pt": "unknown"}


def test_text_with_binary_tail_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello\n" * 1000 + b"\x00\x01payload")
    with open(path, "rb") as fh:
        assert identify_non_model(fh, path.stat().st_size) is None
    report = scan(tmp_path)
    assert [Path(f.path).name for f in report.files] == ["notes.txt"]
    assert report.files[0].verdict is Verdict.UNKNOWN


def test_protobuf_that_is_not_sentencepiece_is_not_skipped(tmp_path: Path) -> None:
    # field 1 varint (a SavedModel's schema version), then a message: not a tokenizer.
    path = B.write(tmp_path / "saved.bin2", b"\x08\x01\x12\x03abc")
    with open(path, "rb") as fh:
        assert identify_non_model(fh, os.path.getsize(path)) is None


def test_polyglot_text_pickle_is_still_judged(cli: Cli, tmp_path: Path) -> None:
    """Protocol-0 pickles are text: identification comes after the content scan, never
    instead of it."""
    B.write(tmp_path / "notes.txt", B.os_system_p0("x"))
    r = cli("scan", tmp_path)
    assert r.code == 1


def _run_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    # A subprocess, so that a scan that blocks on a FIFO fails the test instead of hanging it.
    return subprocess.run([sys.executable, "-m", "safehub", "scan", "-f", "json",
                           *(os.fspath(a) for a in args)], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_in_folder_is_skipped_without_opening(tmp_path: Path) -> None:
    B.write(tmp_path / "ok.pkl", pickle.dumps([1], 2))
    os.mkfifo(tmp_path / "pytorch_model.bin")
    r = _run_cli(tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert _by_name(doc["files"]) == {"ok.pkl": "clean"}
    reasons = {Path(s["path"]).name: s["reason"] for s in doc["skipped"]}
    assert reasons == {"pytorch_model.bin": "not a regular file (a FIFO); not opened"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_directly_is_not_scanned_and_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    os.symlink(fifo, tmp_path / "alias.pt")
    for target in (fifo, tmp_path / "alias.pt"):
        r = _run_cli(target)
        assert r.returncode == 2, r.stderr
        (entry,) = json.loads(r.stdout)["files"]
        assert entry["verdict"] == "error" and "FIFO" in entry["error"]


def test_socket_in_folder_is_skipped(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    path = tmp_path / "s.pt"
    try:
        sock.bind(os.fspath(path))
    except OSError:
        pytest.skip("cannot bind a unix socket here")
    try:
        report = scan(tmp_path)
    finally:
        sock.close()
    assert report.files == ()
    assert [(Path(s.path).name, s.reason) for s in report.skipped] == [
        ("s.pt", "not a regular file (a socket); not opened")]


def test_unlistable_folder_is_not_scanned(cli: Cli, tmp_path: Path) -> None:
    """A folder whose path is longer than the OS accepts cannot be listed (even by root):
    it is reported "not scanned", never silently dropped."""
    B.write(tmp_path / "ok.pkl", pickle.dumps([1], 2))
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 x 250 characters: past PATH_MAX (4096)
            os.mkdir("d" * 250, dir_fd=fd)
            nxt = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        evil = os.open("evil.pkl", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(evil, B.os_system_p0("x"))
        os.close(evil)
    finally:
        os.close(fd)
    r = cli("scan", "-f", "json", tmp_path)
    assert r.code == 2, r.err
    verdicts = [f["verdict"] for f in json.loads(r.out)["files"]]
    assert sorted(verdicts) == ["clean", "error"]


def _sentencepiece_model() -> bytes:
    """A minimal sentencepiece ModelProto: pieces (piece string, float score), trainer spec."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    pieces = b"".join(field(1, field(1, text) + bytes([2 << 3 | 5]) + b"\0\0\x80\xbf")
                      for text in (b"<unk>", b"\xe2\x96\x81the", b"s"))
    return pieces + field(2, b"\x08\x01") + field(3, b"\x0a\x04nmt\x00"[:6])


def test_image_signatures_identified_before_scanning_end_every_unpickler() -> None:
    """The signatures skipped without a content scan cannot be read past by any unpickler,
    whatever follows them (checked with the real C and Python unpicklers)."""
    import io

    from safehub._scanner.nonmodel import _DEAD_MAGIC

    resolved: list[str] = []

    class Lenient(pickle.Unpickler):
        def persistent_load(self, pid: object) -> object:
            return 0

        def find_class(self, module: str, name: str) -> object:
            resolved.append(f"{module}.{name}")
            return print

    tail = B.os_system_p0("x")
    for magic, _ in _DEAD_MAGIC:
        for filler in (b"", b"\n", b"1\n", b"xyz", b"\x00" * 8, b"N" * 9, b"(" * 3):
            for unpickler in (pickle.Unpickler, Lenient, pickle._Unpickler):
                with pytest.raises(_UNPICKLE_ERRORS):
                    unpickler(io.BytesIO(magic + filler + tail)).load()
    assert resolved == []


def test_image_with_hidden_zip_is_scanned(tmp_path: Path) -> None:
    import zipfile

    buf = tmp_path / "z.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/data.pkl", B.os_system_p0("x"))
    B.write(tmp_path / "figure.png", PNG + buf.read_bytes())
    buf.unlink()
    report = scan(tmp_path)
    assert [Path(f.path).name for f in report.files] == ["figure.png"]
    assert report.files[0].verdict is Verdict.UNSAFE


def test_link_to_a_folder_inside_is_followed_once(cli: Cli, tmp_path: Path) -> None:
    """Loaders follow a link to a folder (a sharded checkpoint's index names shards through
    it): inside the scanned folder its files are scanned; a loop back up ends."""
    root = tmp_path / "model"
    (root / "store").mkdir(parents=True)
    B.write(root / "store" / "pytorch_model-00002-of-00002.bin", B.os_system_p0("x"))
    os.symlink(root / "store", root / "shards")  # the same folder under a second name
    os.symlink(root, root / "store" / "up")  # a loop
    r = cli("scan", "-f", "json", root)
    assert r.code == 1, r.err
    doc = json.loads(r.out)
    # "shards" sorts first: the folder is scanned through the link, then met again as
    # "store" and through the loop, and left out with a reason each time.
    assert [(Path(f["path"]).parent.name, f["verdict"]) for f in doc["files"]] == [
        ("shards", "unsafe")]
    assert {Path(s["path"]).name for s in doc["skipped"]} == {"store", "up"}


def test_link_to_a_folder_outside_is_not_scanned(cli: Cli, tmp_path: Path) -> None:
    """walk2 of issue 10: the shards behind a link leading out of the folder were listed
    as skipped and the folder exited 0; torch.load follows the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    B.write(outside / "pytorch_model-00002-of-00002.bin", B.os_system_p0("x"))
    root = tmp_path / "model"
    root.mkdir()
    B.write(root / "pytorch_model-00001-of-00002.bin", pickle.dumps({"w": 1}, 2))
    os.symlink(os.path.join("..", "outside"), root / "shards")
    r = cli("scan", "-f", "json", root)
    assert r.code == 2, r.err
    doc = json.loads(r.out)
    assert _by_name(doc["files"]) == {"pytorch_model-00001-of-00002.bin": "clean",
                                      "shards": "error"}
