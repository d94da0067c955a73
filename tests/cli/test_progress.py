"""Progress is drawn on a terminal (stderr a pty), never on stdout, never into a pipe, never
with -q; ``download_url_to_file(progress=True)`` draws a bar on a terminal as torch.hub does.
"""

from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO


def _run_with_pty_stderr(argv: list[str], cwd: Path,
                         env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal: (exit code, stdout, terminal text)."""
    master, slave = os.openpty()
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    environment.pop("SAFEHUB_NO_PROGRESS", None)
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=environment)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 600)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode() if proc.stdout else ""
    code = proc.wait(timeout=600)
    os.close(master)
    return code, out, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for i in range(5):
        (models / f"m{i}.pkl").write_bytes(pickle.dumps({"i": i}))
    return models


def test_scan_draws_progress_on_a_terminal_only(folder: Path) -> None:
    code, out, tty = _run_with_pty_stderr([sys.executable, "-m", "safehub", "scan",
                                           str(folder)], folder.parent)
    assert code == 0
    assert "scanning" in tty and "files" in tty  # the counter was drawn on the terminal
    assert "5 files: 5 clean" in tty
    assert "scanning" not in out and "\r" not in out and "\x1b" not in out  # stdout: report

    code, out, tty = _run_with_pty_stderr([sys.executable, "-m", "safehub", "-q", "scan",
                                           str(folder), "-f", "json"], folder.parent)
    assert code == 0 and '"schema_version"' in out
    assert tty == ""  # -q: nothing at all on the terminal

    piped = subprocess.run([sys.executable, "-m", "safehub", "scan", str(folder)],
                           capture_output=True, text=True, cwd=folder.parent,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "scanning" not in piped.stderr and "\r" not in piped.stderr


def test_audit_and_verify_draw_progress_on_a_terminal(folder: Path, tmp_path: Path) -> None:
    from tests.signing.helpers import make_key

    code, _, tty = _run_with_pty_stderr([sys.executable, "-m", "safehub", "audit",
                                         "--no-state", str(folder)], tmp_path)
    assert code == 0 and "auditing" in tty
    key = make_key(tmp_path, "k")
    subprocess.run([sys.executable, "-m", "safehub", "sign", str(folder), "--key",
                    str(key.private_path)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    code, out, tty = _run_with_pty_stderr([sys.executable, "-m", "safehub", "verify",
                                           str(folder), "--key", str(key.public_path)],
                                          tmp_path)
    assert code == 0 and "hashing" in tty and "hashing" not in out


DOWNLOAD = textwrap.dedent("""
    import sys
    import safehub
    safehub.download_url_to_file(sys.argv[1], sys.argv[2], progress=True, policy=sys.argv[3])
""")


def test_download_url_to_file_draws_a_bar_on_a_terminal(tmp_path: Path,
                                                        isolated_torch_home: Path) -> None:
    from tests.fetch.fakehub import FakeHub
    from tests.fetch.helpers import torch_bytes, write_policy

    torch = pytest.importorskip("torch")
    hub = FakeHub("127.0.0.1")
    try:
        data = torch_bytes({"w": torch.zeros(1 << 20)})  # 4 MiB
        url = hub.add_file("/models/big.pt", data)
        policy = write_policy(tmp_path / "policy.toml", hub)
        env = {"TORCH_HOME": str(isolated_torch_home)}
        argv = [sys.executable, "-c", DOWNLOAD, url, str(tmp_path / "big.pt"), str(policy)]
        code, out, tty = _run_with_pty_stderr(argv, tmp_path, env)
        assert code == 0, tty
        assert (tmp_path / "big.pt").read_bytes() == data
        assert "big.pt" in tty and "%" in tty and "B/s" in tty  # tqdm's byte bar
        assert out == ""

        piped = subprocess.run([*argv[:-2], str(tmp_path / "again.pt"), str(policy)],
                               capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(REPO), **env})
        assert piped.returncode == 0, piped.stderr
        assert "%" not in piped.stderr and "\r" not in piped.stderr
    finally:
        hub.close()


def test_sandbox_start_up_says_what_it_is_doing(tmp_path: Path,
                                                isolated_torch_home: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("def linear():\n    return {}\n")
    code, out, tty = _run_with_pty_stderr(
        [sys.executable, "-m", "safehub", "list", str(repo), "--source", "local"], tmp_path,
        {"TORCH_HOME": str(isolated_torch_home)})
    assert code == 0, tty
    assert out == "linear\n"
    assert "starting the sandbox" in tty
