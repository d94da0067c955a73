"""Every subcommand meets bad input with ONE line on stderr, the documented exit code, no
traceback, and nothing damaged.

The stderr contract checked here: an error is exactly one line, ``safehub: ...``, naming the
input and (where there is one) the fix, with every character from the input escaped
(``-v`` adds detail lines; these runs do not pass it). Inputs of every awkward kind: missing,
folder, FIFO, device, dangling symlink, symlink to a device, non-UTF-8 and newline names,
malformed URLs and repository names, hostile sandbox results, Ctrl-C.
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
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, CliResult

Cli = Callable[..., CliResult]


def assert_clean_failure(result: CliResult, code: int) -> None:
    """The documented exit code and exactly one inert ``safehub`` line on stderr."""
    assert result.code == code, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1, f"not one line on stderr: {result.err!r}"
    line = lines[0]
    assert line.startswith("safehub"), f"stray line: {line!r}"
    assert "Traceback" not in line and "internal error" not in line, line
    unsafe = [c for c in line if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert not unsafe, f"unescaped characters {unsafe!r} in {line!r}"


class _Hung(BaseException):  # not an Exception: the CLI's catch-all must not swallow it
    pass


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    """A command that blocks (a FIFO opened for reading) fails the test instead of hanging
    it. A guard against hangs, not a timing assertion: the limit is minutes."""
    def hung(signum: int, frame: object) -> None:
        raise _Hung("the command blocked (a FIFO or device opened for reading?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(600)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


KINDS = ["missing", "directory", "fifo", "device", "dangling symlink", "symlink to device",
         "non-UTF-8 name", "newline name"]


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """Paths of every awkward kind, in a folder of their own."""
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "empty").mkdir()
    os.mkfifo(d / "fifo")
    (d / "dangling").symlink_to(d / "nowhere")
    (d / "devlink").symlink_to("/dev/null")
    (d / "model.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    return {
        "missing": str(d / "missing"),
        "directory": str(d / "empty"),
        "fifo": str(d / "fifo"),
        "device": "/dev/null",
        "dangling symlink": str(d / "dangling"),
        "symlink to device": str(d / "devlink"),
        "non-UTF-8 name": os.fsdecode(os.fsencode(d) + b"/missing\xff"),
        "newline name": str(d / "missing\nsafehub: forged"),
    }


def assert_undamaged(inputs: dict[str, str]) -> None:
    d = Path(inputs["directory"]).parent
    assert sorted(os.listdir(d)) == ["dangling", "devlink", "empty", "fifo", "model.pkl"]
    assert stat.S_ISFIFO(os.lstat(inputs["fifo"]).st_mode)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert os.readlink(d / "devlink") == "/dev/null"
    assert pickle.loads((d / "model.pkl").read_bytes()) == {"lr": 0.1}


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "directory"] + ["empty folder"])
@pytest.mark.parametrize("command", ["scan", "audit"])
def test_scan_and_audit_refuse_what_they_cannot_read(cli: Cli, inputs: dict[str, str],
                                                     kind: str, command: str) -> None:
    extra = ["--no-state"] if command == "audit" else []
    path = inputs["directory" if kind == "empty folder" else kind]
    for fmt in ("text", "json", "sarif"):
        result = cli(command, path, "-f", fmt, *extra)
        assert_clean_failure(result, 2)
    assert_undamaged(inputs)


def test_scan_of_a_fifo_returns(inputs: dict[str, str], tmp_path: Path) -> None:
    fifo = inputs["fifo"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A FIFO is never opened for reading (that would block until a writer came): "not
    # scanned", exit 2. The timeout is a hang guard, not a timing assertion.
    proc = subprocess.run([sys.executable, "-m", "safehub", "scan", fifo],
                          capture_output=True, text=True, timeout=120)
    assert_clean_failure(CliResult(proc.returncode, proc.stdout, proc.stderr), 2)


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
    assert_clean_failure(result, 2)
    assert "--quarantine" in result.err
    assert not_a_folder.read_text() == "keep me\n"
    assert sorted(p.name for p in models.iterdir()) == ["w.pt"]  # nothing converted


@pytest.mark.parametrize("kind", KINDS)
def test_verify_sign_and_policy_refuse_bad_paths(cli: Cli, inputs: dict[str, str],
                                                 tmp_path: Path, kind: str) -> None:
    from tests.signing.helpers import make_key

    key = make_key(tmp_path, "k")
    if kind != "directory":  # a folder is what verify and sign take
        assert_clean_failure(cli("verify", inputs[kind], "--key", key.public_path), 2)
        assert_clean_failure(cli("sign", inputs[kind], "--key", key.private_path), 2)
    assert_clean_failure(cli("verify", inputs["directory"], "--key", inputs[kind]), 2)
    assert_clean_failure(cli("sign", inputs["directory"], "--key", inputs[kind]), 2)
    # An unreadable policy path is an input error: one line on stderr, nothing on stdout.
    checked = cli("policy", "check", inputs[kind])
    assert_clean_failure(checked, 2)
    assert checked.out == ""
    for args in (["policy", "show", inputs[kind]], ["policy", "explain", "a/b", "--policy",
                                                    inputs[kind]],
                 ["scan", inputs[kind], "--policy", inputs[kind]]):
        assert_clean_failure(cli(*args), 2)
    assert_undamaged(inputs)
    assert not list(Path(inputs["directory"]).iterdir())  # no signature written


URLS = ["https://", "hf://", "s3://", "https://exa mple.com/x", "hf://a/b@\n",
        "https://x\nsafehub: forged/a.bin", "https://h/\u202emodel.bin", "hf://own\x1b[2K/r",
        "s3://bucket\r/key"]


@pytest.mark.parametrize("url", URLS)
def test_malformed_urls_are_one_line(cli: Cli, url: str, tmp_path: Path) -> None:
    # Refused before any connection: nothing here reaches the network.
    assert_clean_failure(cli("scan", url), 2)
    assert_clean_failure(cli("audit", "--no-state", url), 2)
    assert_clean_failure(cli("policy", "explain", "--url", url), 2)


REPOS = ["a/b/c", "https://", "https://github.com/", "owner/repo:", ":ref", "owner/",
         "owner/repo\nsafehub: forged", "own er/repo", "owner/re\u202epo"]


@pytest.mark.parametrize("spec", REPOS)
def test_hub_commands_refuse_malformed_repos(cli: Cli, spec: str, tmp_path: Path,
                                             isolated_torch_home: Path) -> None:
    out = tmp_path / "w.safetensors"
    for args in (["list", spec], ["help", spec, "linear"], ["load", spec, "linear", "--out", out],
                 ["lock", spec], ["policy", "explain", spec]):
        assert_clean_failure(cli(*args), 2)
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_hub_commands_refuse_bad_local_folders(cli: Cli, inputs: dict[str, str], kind: str,
                                               tmp_path: Path,
                                               isolated_torch_home: Path) -> None:
    out = tmp_path / "w.safetensors"
    for args in (["list", inputs[kind]], ["help", inputs[kind], "linear"],
                 ["load", inputs[kind], "linear", "--out", out]):
        assert_clean_failure(cli(*args, "--source", "local"), 2)
    assert not out.exists()
    assert_undamaged(inputs)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "[" * 40 + "]" * 40,
                                   "9" * 5000, "[" * 5000 + "]" * 5000])
def test_load_arguments_must_be_finite_json(cli: Cli, tmp_path: Path, value: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("def linear(x=None):\n    return {}\n")
    out = tmp_path / "w.safetensors"
    result = cli("load", repo, "linear", f"x={value}", "--source", "local", "--out", out)
    assert_clean_failure(result, 2)
    assert not out.exists()


HOSTILE_REPO = """
import torch

FORGED = "tiny\\nsafehub: tiny: 2 tensors written to /tmp/x\\r\\x1b[2K\\u202e\\u2028"

def hostile_key():
    return {FORGED: torch.ones(1)}

def broken():
    raise RuntimeError(FORGED)

def linear():
    return {"w": torch.ones(1)}
"""


def test_hostile_sandbox_results_are_one_line(cli: Cli, tmp_path: Path,
                                              isolated_torch_home: Path) -> None:
    pytest.importorskip("torch")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HOSTILE_REPO)
    out = tmp_path / "w.safetensors"
    # A hostile tensor name crosses, escaped: no line of its own, nothing unescaped.
    loaded = cli("load", repo, "hostile_key", "--source", "local", "--out", out)
    assert loaded.code == 0, loaded.err
    assert not [line for line in loaded.err.splitlines() if line.startswith("safehub: tiny")]
    assert not [c for c in loaded.err if c != "\n" and unicodedata.category(c)[0] in "CZ"
                and c != " "]
    out.unlink()
    # The repository's code failing in the sandbox: exit 1, as documented, one line.
    result = cli("load", repo, "broken", "--source", "local", "--out", out)
    assert_clean_failure(result, 1)
    # An unknown entrypoint: one line naming it and the entrypoints that exist.
    for args in (["load", repo, "nope", "--out", out], ["help", repo, "nope"]):
        result = cli(*args, "--source", "local")
        assert result.code in (1, 2)
        assert_clean_failure(result, result.code)
        assert "nope" in result.err and "linear" in result.err and "broken" in result.err
    assert not out.exists()


def test_convert_refuses_bad_sources_and_targets(cli: Cli, inputs: dict[str, str],
                                                 tmp_path: Path) -> None:
    for kind in KINDS:
        assert_clean_failure(cli("convert", inputs[kind], tmp_path / "o.safetensors"), 2)
    model = str(Path(inputs["missing"]).parent / "model.pkl")
    assert_clean_failure(cli("convert", model, tmp_path / "missing" / "o.safetensors"), 2)
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"keep")
    result = cli("convert", model, existing)
    assert_clean_failure(result, 2)
    assert "--force" in result.err and "overwrite=True" not in result.err
    # A device is never replaced, forced or not: the fix offered is not --force.
    result = cli("convert", model, "/dev/null")
    assert_clean_failure(result, 2)
    assert "character device" in result.err and "--force" not in result.err
    assert existing.read_bytes() == b"keep"
    assert_undamaged(inputs)
    assert not (tmp_path / "o.safetensors").exists()


def test_details_come_with_verbose(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\nextends = "default"\ncolour = 1\n[sandbox]\ntimeout_s = -1\n'
                   'size = 2\n')
    terse = cli("scan", tmp_path, "--policy", bad)
    assert_clean_failure(terse, 2)
    assert "bad.toml:" in terse.err and "; 2 more with -v]" in terse.err
    assert "fix: " in terse.err
    verbose = cli("-v", "scan", tmp_path, "--policy", bad)
    assert verbose.code == 2
    lines = verbose.err.splitlines()
    assert lines[0].startswith("safehub: ") and "more with -v" not in lines[0]
    assert all(line.startswith("  ") for line in lines[1:])
    for key in ("colour", "sandbox.timeout_s", "sandbox.size"):
        assert any(key in line for line in lines[1:]), (key, lines)


def test_an_error_line_names_input_and_fix_inertly() -> None:
    from safehub.errors import PolicyError, PolicyIssue, SafehubError

    plain = SafehubError("cannot open the file", subject="a\nsafehub: forged\u202e",
                         fix="pass overwrite=True", cli_fix="pass --force")
    line = plain.summary(surface="cli")
    assert line == "a\\nsafehub: forged\\u202e: cannot open the file; fix: pass --force"
    assert plain.summary().endswith("fix: pass overwrite=True")
    named = SafehubError("p.toml is bad", subject="p.toml")
    assert named.summary() == "p.toml is bad"  # the message names it: not repeated
    issues = [PolicyIssue("p.toml", f"k{i}", "unknown key\r", line=i) for i in range(3)]
    many = PolicyError("invalid", subject="p.toml", issues=issues)
    assert many.summary(surface="cli") == (
        "p.toml: invalid [p.toml:0: k0: unknown key\\r; 2 more with -v]")
    assert "\n" not in many.summary() and len(many.detail_lines()) == 3


def test_an_internal_error_is_one_line_and_v_shows_where(
        cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import safehub.cli.doctor

    def broken(args: object) -> int:
        raise ValueError("boom\nsafehub: forged")

    monkeypatch.setattr(safehub.cli.doctor, "run", broken)
    terse = cli("doctor")
    assert terse.code == 2
    assert terse.err.splitlines() == [
        "safehub: internal error (please report it; -v shows where): ValueError: "
        "boom\\nsafehub: forged"]
    verbose = cli("-v", "doctor")
    assert verbose.code == 2
    lines = verbose.err.splitlines()
    assert lines[0].startswith("safehub: internal error") and len(lines) > 2
    assert all(line.startswith("  | ") for line in lines[1:]), lines


def test_usage_errors_are_one_line(cli: Cli) -> None:
    for args in (["scan"], ["scan", "x", "-f", "yaml"], ["nope"], ["load", "a/b"],
                 ["scan", "x", "-f", "x\nsafehub: forged"], ["help", "a/b", "not an id"]):
        result = cli(*args)
        assert_clean_failure(result, 2)


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


def _terminal_sigint() -> None:
    """In the child before exec: SIGINT handled and unblocked, as a shell starts a
    foreground command. A test worker's own state is inherited otherwise (a library that
    ignored or blocked SIGINT in it, or a shell's background job), and a CLI must respect
    an inherited SIG_IGN, so the interrupt would not be a Ctrl-C at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupt_when_busy(proc: subprocess.Popen[str], busy: Callable[[], bool]) -> None:
    for _ in range(1200):  # polls, not a timing assertion: waits for the state to appear
        if proc.poll() is not None or busy():
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: the foreground group


def _cli_load_local(repo: Path, entry: str, out_dir: Path) -> subprocess.Popen[str]:
    """`safehub load REPO ENTRY --source local` into an empty ``out_dir``, in its own
    session (so that a SIGINT to its group is what a terminal's Ctrl-C is)."""
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "safehub", "load", str(repo), entry,
                             "--source", "local", "--out", str(out_dir / "w.safetensors")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, preexec_fn=_terminal_sigint)


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
    proc = _cli_load_local(repo, "slow", out_dir)
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
    assert err.splitlines() == ["safehub: interrupted"]
    assert list(out_dir.iterdir()) == []
    for _ in range(600):  # the sandbox's processes go with the CLI (waits, not timing)
        alive = [pid for pid in spawned if _running(pid)]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"sandbox processes left running: {alive}"


@pytest.mark.parametrize("after_s", [0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0])
def test_ctrl_c_at_any_moment_of_a_hub_call_start_exits_130_with_one_line(
        tmp_path: Path, isolated_torch_home: Path, after_s: float) -> None:
    # The parent imports the policy engine (pydantic, whose Rust core turns an interrupt
    # inside its init into a panic and exit 1) while the zygote starts, then waits on the
    # sandbox: an interrupt anywhere (held through an import, then delivered to a parent
    # blocked in its wait) is one "interrupted" line and 130.
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("import time\ndef slow():\n    time.sleep(600)\n")
    out_dir = tmp_path / "out"
    proc = _cli_load_local(repo, "slow", out_dir)
    for _ in range(1200):  # main has run once the zygote is there (polls, not timing)
        if proc.poll() is not None or _children(proc.pid):
            break
        time.sleep(0.01)
    time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["safehub: interrupted"]
    assert list(out_dir.iterdir()) == []


def test_ctrl_c_while_writing_the_report_exits_130_leaving_nothing(tmp_path: Path) -> None:
    model = tmp_path / "m.pkl"
    model.write_bytes(pickle.dumps({"lr": 0.1}))
    fifo = tmp_path / "report.pipe"
    os.mkfifo(fifo)  # no reader: opening it for the report blocks, as `> pipe` does
    proc = subprocess.Popen([sys.executable, "-m", "safehub", "scan", str(model), "-o",
                             str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=tmp_path,
                            preexec_fn=_terminal_sigint)

    def blocked_in_open() -> bool:
        try:
            return Path(f"/proc/{proc.pid}/wchan").read_text() in ("fifo_open", "pipe_wait",
                                                                    "wait_for_partner")
        except OSError:
            return False

    _interrupt_when_busy(proc, blocked_in_open)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["safehub: interrupted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl", "report.pipe"]


def test_an_empty_policy_name_is_named_as_such(tmp_path: Path) -> None:
    """'' once resolved to the working folder ("policy /cwd cannot be read: it is a folder;
    fix: check the file's permissions"): the error now says the name is empty."""
    from tests.conftest import run_module

    model = tmp_path / "m.pkl"
    model.write_bytes(pickle.dumps({"lr": 0.1}))
    for args in (["scan", model, "--policy", ""], ["policy", "show", " "]):
        result = run_module(*args, cwd=tmp_path)
        assert_clean_failure(result, 2)
        assert "the policy name is empty" in result.err and "folder" not in result.err


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "0", "-1"])
def test_time_limits_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    """``load --timeout nan`` was accepted and silently meant the policy's limit."""
    from tests.conftest import run_module

    out = tmp_path / "w.safetensors"
    for args in (["load", tmp_path, "linear", "--source", "local", "--out", out,
                  "--timeout", value], ["scan", tmp_path, "--deadline", value]):
        result = run_module(*args, cwd=tmp_path)
        assert_clean_failure(result, 2)
        assert "positive number of seconds" in result.err
    assert not out.exists()
