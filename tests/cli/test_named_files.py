"""Files a user names for safehub to keep (``--state``, ``--journal``, ``--lockfile``,
``--signature``, convert's OUT) that are not regular files: refused in one line, exit 2,
before any work, never opened for reading (a FIFO would block forever, a device never
ends) and never replaced (renaming a file onto ``/dev/null`` as root replaces the system's
device node).

Real ``python -m safehub`` processes; the devices are the test's own nodes (made with
mknod where the test may, i.e. as root, the case where the damage happens), so a failure
damages nothing outside the test's folder.
"""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_bad_inputs import assert_clean_failure
from tests.conftest import run_module


def _nodes(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a folder and (where mknod is allowed) a character device like /dev/null."""
    d = tmp_path / "nodes"
    d.mkdir()
    nodes = {"fifo": d / "fifo", "folder": d / "folder"}
    os.mkfifo(nodes["fifo"])
    nodes["folder"].mkdir()
    try:
        os.mknod(d / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        nodes["device"] = d / "null"
    except OSError:  # not root: nothing could replace a real device node either
        pass
    return nodes


def _kind(path: Path) -> str:
    mode = os.lstat(path).st_mode
    return ("fifo" if stat.S_ISFIFO(mode) else "device" if stat.S_ISCHR(mode)
            else "folder" if stat.S_ISDIR(mode) else "regular")


def _assert_intact(nodes: dict[str, Path]) -> None:
    for kind, path in nodes.items():
        assert _kind(path) == kind, f"{path} was replaced by a {_kind(path)} file"
    assert not list(nodes["folder"].iterdir())
    assert sorted(p.name for p in nodes["fifo"].parent.iterdir()) == sorted(
        p.name for p in nodes.values())  # no temporary file left beside them


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "config.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    return folder


@pytest.mark.parametrize("option", ["--state", "--journal", "--lockfile"])
def test_audit_refuses_special_state_journal_and_lockfile(tmp_path: Path, models: Path,
                                                          option: str) -> None:
    nodes = _nodes(tmp_path)
    extra = [] if option == "--state" else ["--no-state"]
    for kind, path in nodes.items():
        # The subprocess timeout is a hang guard (a FIFO opened for reading), not timing.
        result = run_module("audit", models, option, path, *extra, cwd=tmp_path)
        assert_clean_failure(result, 2)
        assert str(path) in result.err and result.out == "", (kind, result.err)
    _assert_intact(nodes)


def test_sign_never_replaces_a_special_signature_path(tmp_path: Path) -> None:
    from tests.signing.helpers import make_key, make_model

    key = make_key(tmp_path, "k")
    model = make_model(tmp_path / "model")
    nodes = _nodes(tmp_path)
    for path in nodes.values():
        result = run_module("sign", model, "--key", key.private_path, "--signature", path)
        assert_clean_failure(result, 2)
    _assert_intact(nodes)
    assert not (model / "model.sig").exists()


def test_lock_never_reads_or_replaces_a_special_lockfile(tmp_path: Path, models: Path) -> None:
    nodes = _nodes(tmp_path)
    for path in nodes.values():
        assert_clean_failure(run_module("lock", models, "--lockfile", path), 2)
    _assert_intact(nodes)


def test_convert_force_never_replaces_a_device_or_fifo(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, source)
    nodes = _nodes(tmp_path)
    for path in nodes.values():
        result = run_module("convert", source, path, "--force")
        assert_clean_failure(result, 2)
        assert "--force" not in result.err  # forcing cannot make a device a file
    _assert_intact(nodes)


@pytest.mark.parametrize("target", ["/proc/self/comm", "/proc/self/new"])
def test_pseudo_filesystem_targets_are_refused(tmp_path: Path, models: Path,
                                               target: str) -> None:
    from tests.signing.helpers import make_key, make_model

    for args in (["audit", models, "--state", target],
                 ["audit", models, "--no-state", "--journal", target]):
        assert_clean_failure(run_module(*args, cwd=tmp_path), 2)
    key = make_key(tmp_path, "k")
    model = make_model(tmp_path / "model")
    assert_clean_failure(run_module("sign", model, "--key", key.private_path,
                                    "--signature", target), 2)


def test_a_regular_state_and_journal_still_work(tmp_path: Path, models: Path) -> None:
    state, journal = tmp_path / "state.json", tmp_path / "journal.jsonl"
    for _ in range(2):  # written, then read back
        result = run_module("audit", models, "--state", state, "--journal", journal,
                            cwd=tmp_path)
        assert result.code == 0, result.err
    assert state.is_file() and journal.is_file()
    assert "1 unchanged since the last audit" in result.err


def test_verify_refuses_a_special_signature_without_reading_it(tmp_path: Path) -> None:
    from tests.signing.helpers import make_key, make_model

    key = make_key(tmp_path, "k")
    model = make_model(tmp_path / "model")
    nodes = _nodes(tmp_path)
    for kind, path in nodes.items():  # a FIFO blocked verify forever; a device read 64 MiB
        result = run_module("verify", model, "--key", key.public_path, "--signature", path)
        assert_clean_failure(result, 2)
        assert kind.replace("device", "character device").replace("fifo", "FIFO") in result.err
    _assert_intact(nodes)


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_dash_output_is_stdout_never_a_file_named_dash(tmp_path: Path, models: Path,
                                                       command: str) -> None:
    extra = ["--no-state"] if command == "audit" else []
    for quiet in ([], ["-q"]):  # asked for by name: written even with -q
        result = run_module(*quiet, command, models, "-f", "json", "-o", "-", *extra,
                            cwd=tmp_path)
        assert result.code == 0, result.err
        assert '"schema_version"' in result.out
    assert not (tmp_path / "-").exists()


def test_an_unusable_default_state_folder_is_still_a_warning(tmp_path: Path,
                                                             models: Path) -> None:
    """HOME=/dev/null (daemons, some CI): the default state's folder cannot exist. The
    audit runs and warns, as before; only a special file named as the state is refused."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env["HOME"] = "/dev/null"
    result = run_module("audit", models, env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "could not save the audit state" in result.err


def test_a_journal_swapped_for_a_fifo_after_its_check_is_refused_not_waited_on(
        tmp_path: Path) -> None:
    # The journal was checked (and read) by name, then opened again to append: a FIFO put
    # in its place between the two made the plain open wait for a reader forever. The
    # swap is made deterministic by doing it right after the check.
    journal = tmp_path / "audit.jsonl"
    code = f"""
import os
from pathlib import Path
from safehub._audit import journal as module
from safehub._namedfile import NotARegularFile

path = Path({str(journal)!r})
checked = module.Journal._load

def load_then_swap(self):
    checked(self)
    os.mkfifo(path)

module.Journal._load = load_then_swap
try:
    module.Journal(path)
except NotARegularFile as exc:
    print("refused:", exc)
"""
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "FIFO" in done.stdout.upper(), done.stdout
