"""``-o FILE`` behaves like shell redirection and common tools, and never damages anything."""

from __future__ import annotations

import os
import pickle
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_module

Cli = Callable[..., CliResult]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "config.pkl"
    path.write_bytes(pickle.dumps({"lr": 0.1}, protocol=4))
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_new_file_gets_the_umask_mode(cli: Cli, model: Path, tmp_path: Path) -> None:
    for umask, expected in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            out = tmp_path / f"report-{umask:o}.json"
            assert cli("scan", model, "-f", "json", "-o", out).code == 0
        finally:
            os.umask(old)
        assert stat.S_IMODE(out.stat().st_mode) == expected


def test_existing_file_replaced_atomically_keeping_its_mode(cli: Cli, model: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    out.write_text("old report\n")
    out.chmod(0o640)
    before = out.stat().st_ino
    assert cli("scan", model, "-o", out).code == 0
    assert "CLEAN" in out.read_text()
    assert out.stat().st_ino != before  # renamed into place, not rewritten in place
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert not [n for n in _listing(tmp_path) if n.startswith(".safehub-report-")]


def test_symlink_is_written_through(cli: Cli, model: Path, tmp_path: Path,
                                    umask_022: None) -> None:
    target = tmp_path / "real.sarif"
    link = tmp_path / "link.sarif"
    link.symlink_to(target.name)
    assert cli("scan", model, "-f", "sarif", "-o", link).code == 0
    assert link.is_symlink() and os.readlink(link) == target.name
    assert '"version": "2.1.0"' in target.read_text()


def test_fifo_is_opened_and_written_not_replaced(cli: Cli, model: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    thread = threading.Thread(target=reader)
    thread.start()
    result = cli("scan", model, "-f", "json", "-o", fifo)
    thread.join(60)
    assert result.code == 0, result.err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert b'"schema_version"' in got[0]


def test_character_device_is_written_not_replaced(cli: Cli, model: Path) -> None:
    before = os.lstat("/dev/null")
    assert cli("scan", model, "-o", "/dev/null").code == 0
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_dev_stdout_goes_to_stdout_in_a_real_process(model: Path, tmp_path: Path) -> None:
    result = run_module("-q", "scan", model, "-f", "json", "-o", "/dev/stdout", cwd=tmp_path)
    assert result.code == 0, result.err
    assert '"schema_version"' in result.out


@pytest.mark.parametrize("target", ["missing/report.json", "FOLDER", "FOLDER/", "",
                                    "/proc/self/report.json", "/proc/version", "/sys/report"])
def test_unusable_targets_are_one_line_exit_2_nothing_created(cli: Cli, model: Path,
                                                              tmp_path: Path,
                                                              target: str) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = target.replace("FOLDER", str(folder))
    if target.startswith("missing"):
        target = str(tmp_path / target)
    before = _listing(tmp_path) | _listing(folder)
    for command in ("scan", "audit"):
        extra = ["--no-state"] if command == "audit" else []
        result = cli(command, model, "-o", target, *extra)
        assert result.code == 2, result.err
        assert result.out == ""
        assert len(result.err.splitlines()) == 1, result.err
        assert "-o" in result.err
        assert "Traceback" not in result.err
    assert _listing(tmp_path) | _listing(folder) == before
    assert not (tmp_path / "missing").exists()


def test_load_out_target_is_checked_before_any_work(cli: Cli, tmp_path: Path) -> None:
    result = cli("load", tmp_path / "no-repo", "linear", "--source", "local",
                 "--out", tmp_path / "missing" / "w.safetensors")
    assert result.code == 2
    assert len(result.err.splitlines()) == 1 and "--out" in result.err
