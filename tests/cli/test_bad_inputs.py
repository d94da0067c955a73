"""Every subcommand meets bad input with a clear message, the documented exit code, no
traceback, and nothing damaged.

The stderr contract checked here: each message is one line starting with ``safehub``; a
line that belongs to it (``input:``, ``fix:``, a marked block) is indented, so no message can
be mistaken for two. Usage errors and unusable targets are exactly one line.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, CliResult

Cli = Callable[..., CliResult]


def assert_clean_failure(result: CliResult, code: int, *, one_line: bool = False) -> None:
    assert result.code == code, (result.code, result.err)
    lines = result.err.splitlines()
    assert lines, "no message on stderr"
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    for line in lines:
        assert line.startswith("safehub") or line[:1].isspace(), f"stray line: {line!r}"
    if one_line:
        assert len(lines) == 1, result.err


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """Paths of every awkward kind, in a folder of their own."""
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "empty").mkdir()
    os.mkfifo(d / "fifo")
    (d / "dangling").symlink_to(d / "nowhere")
    (d / "model.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    return {
        "missing": str(d / "missing"),
        "directory": str(d / "empty"),
        "device": "/dev/null",
        "dangling symlink": str(d / "dangling"),
        "non-UTF-8 name": os.fsdecode(os.fsencode(d) + b"/missing\xff"),
        "newline name": str(d / "missing\nsafehub: forged"),
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "device", "dangling symlink",
                                  "non-UTF-8 name", "newline name"])
@pytest.mark.parametrize("command", ["scan", "audit"])
def test_scan_and_audit_refuse_what_they_cannot_read(cli: Cli, inputs: dict[str, str],
                                                     kind: str, command: str) -> None:
    extra = ["--no-state"] if command == "audit" else []
    for fmt in ("text", "json", "sarif"):
        result = cli(command, inputs[kind], "-f", fmt, *extra)
        assert_clean_failure(result, 2)
        assert "forged" not in "".join(line for line in result.err.splitlines()
                                       if line.startswith("safehub: forged"))
    assert os.lstat("/dev/null").st_mode & 0o170000 == 0o020000


def test_scan_of_a_fifo_returns(inputs: dict[str, str], tmp_path: Path) -> None:
    fifo = str(Path(inputs["missing"]).parent / "fifo")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A FIFO is never opened for reading (that would block until a writer came): "not
    # scanned", exit 2. The timeout is a hang guard, not a timing assertion.
    proc = subprocess.run([sys.executable, "-m", "safehub", "scan", fifo],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["file", "missing parent", "proc"])
def test_audit_fix_with_an_unusable_quarantine(cli: Cli, tmp_path: Path, kind: str) -> None:
    torch = pytest.importorskip("torch")
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"w": torch.ones(2)}, models / "w.pt")
    not_a_folder = tmp_path / "quarantine.txt"
    not_a_folder.write_text("keep me\n")
    target = {"file": not_a_folder, "missing parent": tmp_path / "no" / "q",
              "proc": Path("/proc/self/q")}[kind]
    result = cli("audit", "--no-state", "--fix", "--quarantine", target, models)
    assert_clean_failure(result, 2, one_line=True)
    assert "--quarantine" in result.err
    assert not_a_folder.read_text() == "keep me\n"
    assert sorted(p.name for p in models.iterdir()) == ["w.pt"]  # nothing converted


def test_verify_sign_and_policy_refuse_bad_paths(cli: Cli, inputs: dict[str, str],
                                                 tmp_path: Path) -> None:
    from tests.signing.helpers import make_key

    key = make_key(tmp_path, "k")
    for kind in ("missing", "device", "dangling symlink", "non-UTF-8 name", "newline name"):
        assert_clean_failure(cli("verify", inputs[kind], "--key", key.public_path), 2)
        assert_clean_failure(cli("sign", inputs[kind], "--key", key.private_path), 2)
        assert_clean_failure(cli("verify", inputs["directory"], "--key", inputs[kind]), 2)
        # `policy check` reports on stdout (its own contract); exit 2, no traceback.
        checked = cli("policy", "check", inputs[kind])
        assert checked.code == 2 and "Traceback" not in checked.out + checked.err


REPOS = ["a/b/c", "https://", "https://github.com/", "owner/repo:", ":ref", "owner/",
         "owner/repo\nsafehub: forged", "own er/repo", "owner/re\u202epo"]


@pytest.mark.parametrize("spec", REPOS)
def test_hub_commands_refuse_malformed_repos(cli: Cli, spec: str, tmp_path: Path,
                                             isolated_torch_home: Path) -> None:
    out = tmp_path / "w.safetensors"
    for args in (["list", spec], ["help", spec, "linear"], ["load", spec, "linear", "--out", out],
                 ["lock", spec]):
        assert_clean_failure(cli(*args), 2)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "device", "dangling symlink",
                                  "non-UTF-8 name", "newline name"])
def test_hub_commands_refuse_bad_local_folders(cli: Cli, inputs: dict[str, str], kind: str,
                                               tmp_path: Path,
                                               isolated_torch_home: Path) -> None:
    out = tmp_path / "w.safetensors"
    for args in (["list", inputs[kind]], ["help", inputs[kind], "linear"],
                 ["load", inputs[kind], "linear", "--out", out]):
        assert_clean_failure(cli(*args, "--source", "local"), 2)
    assert not out.exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "[" * 40 + "]" * 40,
                                   "9" * 5000, "[" * 5000 + "]" * 5000])
def test_load_arguments_must_be_finite_json(cli: Cli, tmp_path: Path, value: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("def linear(x=None):\n    return {}\n")
    out = tmp_path / "w.safetensors"
    result = cli("load", repo, "linear", f"x={value}", "--source", "local", "--out", out)
    assert_clean_failure(result, 2, one_line=True)
    assert not out.exists()


def test_convert_refuses_bad_sources_and_targets(cli: Cli, inputs: dict[str, str],
                                                 tmp_path: Path) -> None:
    for kind in ("missing", "directory", "device", "dangling symlink", "non-UTF-8 name"):
        assert_clean_failure(cli("convert", inputs[kind], tmp_path / "o.safetensors"), 2)
    model = str(Path(inputs["missing"]).parent / "model.pkl")
    assert_clean_failure(cli("convert", model, tmp_path / "missing" / "o.safetensors"), 2)
    result = cli("convert", model, "/dev/null")
    assert_clean_failure(result, 2)
    assert "--force" in result.err and "overwrite=True" not in result.err
    assert os.lstat("/dev/null").st_mode & 0o170000 == 0o020000


def test_usage_errors_are_one_line(cli: Cli) -> None:
    for args in (["scan"], ["scan", "x", "-f", "yaml"], ["nope"], ["load", "a/b"],
                 ["scan", "x", "-f", "x\nsafehub: forged"], ["help", "a/b", "not an id"]):
        result = cli(*args)
        assert_clean_failure(result, 2, one_line=True)


# --- Ctrl-C ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(t) for t in (task / "children").read_text().split())
    except OSError:  # the process or a thread ended meanwhile
        pass
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _interrupt_when_busy(proc: subprocess.Popen[str], busy: Callable[[], bool]) -> None:
    for _ in range(1200):  # polls, not a timing assertion: waits for the state to appear
        if proc.poll() is not None or busy():
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: the foreground group


def test_ctrl_c_during_a_sandboxed_load_exits_130_leaving_nothing(
        tmp_path: Path, isolated_torch_home: Path) -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent("""
        import time
        def slow():
            time.sleep(600)
    """))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "safehub", "load", str(repo), "slow",
                             "--source", "local", "--out", str(out_dir / "w.safetensors")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    # Busy once the sandbox is up: the CLI has a child (the zygote) with a child of its own.
    spawned: set[int] = set()

    def busy() -> bool:
        for child in _children(proc.pid):
            spawned.add(child)
            spawned.update(_children(child))
        return len(spawned) > 1

    _interrupt_when_busy(proc, busy)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "safehub: interrupted"
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
    for _ in range(600):  # the sandbox's processes go with the CLI (waits, not timing)
        alive = [pid for pid in spawned if _running(pid)]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"sandbox processes left running: {alive}"


def test_ctrl_c_while_writing_the_report_exits_130_leaving_nothing(tmp_path: Path) -> None:
    model = tmp_path / "m.pkl"
    model.write_bytes(pickle.dumps({"lr": 0.1}))
    fifo = tmp_path / "report.pipe"
    os.mkfifo(fifo)  # no reader: opening it for the report blocks, as `> pipe` does
    proc = subprocess.Popen([sys.executable, "-m", "safehub", "scan", str(model), "-o",
                             str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=tmp_path)

    def blocked_in_open() -> bool:
        try:
            return Path(f"/proc/{proc.pid}/wchan").read_text() in ("fifo_open", "pipe_wait",
                                                                    "wait_for_partner")
        except OSError:
            return False

    _interrupt_when_busy(proc, blocked_in_open)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl", "report.pipe"]
