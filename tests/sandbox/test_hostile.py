"""The hostile-repo suite.

Each attack is first run under plain torch.hub, in a throwaway process, with a
harmless payload (a marker file, a loopback connection, a decoy process) to show
that it works there; then the same repo goes through the sandbox, which must
contain it with a clear error (or, where the attack is silent, by giving it
nothing to find).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehub.sandbox import (
    BadResult,
    LimitExceeded,
    RepoCodeError,
    Sandbox,
    SandboxLimits,
    SandboxRequest,
    SandboxViolation,
)
from tests.sandbox.conftest import (
    FAST,
    PlainHub,
    TcpSink,
    UdpSink,
    assert_same_tensors,
    make_repo,
    tensor_bytes,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")


def load(sandbox: Sandbox, repo: Path, entry: str, limits: SandboxLimits = FAST,
         **kwargs: object) -> dict[str, object]:
    return sandbox.run(SandboxRequest.for_load(repo, entry, kwargs=kwargs,  # type: ignore[arg-type]
                                               limits=limits)).tensors


def contained(excinfo: pytest.ExceptionInfo[RepoCodeError], *words: str) -> None:
    """The error names what the code tried, with a rule id and a fix."""
    err = excinfo.value
    text = err.diagnostics()
    assert err.rule_id.startswith("SH5") and err.fix
    for word in words:
        assert word in text, text


@pytest.fixture
def world_marker() -> Iterator[Path]:
    """A marker path in the shared temp folder (not inside the test's private tree)."""
    path = Path(tempfile.gettempdir()) / f"safehub-test-marker-{os.getpid()}-{time.time_ns()}"
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def decoy(secret: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process holding the secret in its environment, findable by its command line."""
    tag = f"safehub-decoy-{time.time_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", tag],
                            env={**os.environ})
    proc.tag = tag  # type: ignore[attr-defined]
    yield proc
    proc.kill()
    proc.wait()


# --- code at import time, reached through list and help ------------------------------------

IMPORT_TIME = """
    import torch
    open({marker!r}, "w").write("ran at import")

    def model():
        '''A model.'''
        return torch.nn.Linear(2, 2)
"""


@pytest.mark.parametrize("op", ["list", "help"])
def test_import_time_code_through_list_and_help(op: str, tmp_path: Path, world_marker: Path,
                                                sandbox: Sandbox, plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", IMPORT_TIME.format(marker=str(world_marker)))
    plain = plain_hub.run(op, repo, None if op == "list" else "model")
    assert plain.ok and world_marker.exists(), "plain torch.hub runs import-time code"
    world_marker.unlink()

    request = (SandboxRequest.for_list(repo, limits=FAST) if op == "list"
               else SandboxRequest.for_help(repo, "model", limits=FAST))
    with pytest.raises(SandboxViolation) as info:
        sandbox.run(request)
    contained(info, "PermissionError", "importing hubconf.py", "SH502")
    assert not world_marker.exists()


def test_list_and_help_answer_without_side_effects(tmp_path: Path, sandbox: Sandbox,
                                                   plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", '''
        import torch
        dependencies = ["torch"]
        def alpha(n=2):
            """Alpha model: an n-by-n linear layer."""
            return torch.nn.Linear(n, n)
        def beta():
            return {}
        _hidden = lambda: None
        CONSTANT = 3
    ''')
    plain_list = plain_hub.run("list", repo)
    plain_help = plain_hub.run("help", repo, "alpha")
    result = sandbox.run(SandboxRequest.for_list(repo, limits=FAST))
    assert list(result.entrypoints) == plain_list.result["entrypoints"] == ["alpha", "beta"]
    doc = sandbox.run(SandboxRequest.for_help(repo, "alpha", limits=FAST)).doc
    assert doc == plain_help.result["doc"]


# --- processes -----------------------------------------------------------------------------


def test_os_system(tmp_path: Path, world_marker: Path, sandbox: Sandbox,
                   plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", """
        import os, torch
        def model(marker):
            status = os.system(f"touch {marker}")
            if status != 0:
                raise RuntimeError(f"os.system returned {status}")
            return torch.nn.Linear(2, 2)
    """)
    assert plain_hub.run("load", repo, "model", kwargs={"marker": str(world_marker)}).ok
    assert world_marker.exists(), "plain torch.hub lets the repo run shell commands"
    world_marker.unlink()

    with pytest.raises(RepoCodeError) as info:
        load(sandbox, repo, "model", marker=str(world_marker))
    contained(info, "os.system returned")
    assert not world_marker.exists()


def test_subprocess(tmp_path: Path, world_marker: Path, sandbox: Sandbox,
                    plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", """
        import subprocess, torch
        def model(marker):
            subprocess.run(["touch", marker], check=True)
            return torch.nn.Linear(2, 2)
    """)
    assert plain_hub.run("load", repo, "model", kwargs={"marker": str(world_marker)}).ok
    assert world_marker.exists()
    world_marker.unlink()

    with pytest.raises(SandboxViolation) as info:
        load(sandbox, repo, "model", marker=str(world_marker))
    contained(info, "PermissionError", "SH502")
    assert not world_marker.exists()


# --- files ---------------------------------------------------------------------------------

WRITE_OUTSIDE = """
    import torch
    def model(targets):
        for target in targets:
            with open(target, "w") as fh:
                fh.write("written by the repo")
        return torch.nn.Linear(2, 2)
"""


def test_writing_outside_the_repo(tmp_path: Path, world_marker: Path, sandbox: Sandbox,
                                  plain_hub: PlainHub) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bashrc = home / ".bashrc"
    repo = make_repo(tmp_path / "repo", WRITE_OUTSIDE)
    plain = plain_hub.run("load", repo, "model",
                          kwargs={"targets": [str(bashrc), str(world_marker)]})
    assert plain.ok and bashrc.exists() and world_marker.exists()
    bashrc.unlink()
    world_marker.unlink()

    for target in (world_marker, bashrc, repo / "hubconf.py"):
        with pytest.raises(RepoCodeError) as info:
            load(sandbox, repo, "model", targets=[str(target)])
        contained(info, "Error")
    assert not bashrc.exists() and not world_marker.exists()
    assert (repo / "hubconf.py").read_text() == __import__("textwrap").dedent(WRITE_OUTSIDE)


def test_persistence_in_the_python_installation(tmp_path: Path, sandbox: Sandbox,
                                                plain_hub: PlainHub) -> None:
    # A file dropped into site-packages (a .pth file, in a real attack) runs in every
    # later Python process. The marker here is a plain .txt file, removed afterwards.
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    if not os.access(site, os.W_OK):
        pytest.skip("site-packages is not writable by this user, with or without safehub")
    target = site / f"safehub-test-{time.time_ns()}.txt"
    repo = make_repo(tmp_path / "repo", WRITE_OUTSIDE)
    try:
        assert plain_hub.run("load", repo, "model", kwargs={"targets": [str(target)]}).ok
        assert target.exists(), "plain torch.hub lets the repo write into site-packages"
        target.unlink()
        with pytest.raises(SandboxViolation):
            load(sandbox, repo, "model", targets=[str(target)])
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


SMUGGLE = """
    import torch
    def model(path):
        data = open(path, "rb").read()
        return {"weight": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
"""


def test_reading_a_secret_file_into_tensors(tmp_path: Path, world_marker: Path,
                                            sandbox: Sandbox, plain_hub: PlainHub) -> None:
    secret_file = tmp_path / "credentials"
    secret_file.write_bytes(b"aws_secret_access_key=AKIA-TEST")
    world_marker.write_bytes(b"another secret, world-readable")
    repo = make_repo(tmp_path / "repo", SMUGGLE)
    for path in (secret_file, world_marker):
        plain = plain_hub.run("load", repo, "model", kwargs={"path": str(path)})
        assert tensor_bytes(plain.tensors["weight"]) == path.read_bytes(), "smuggled out"

        with pytest.raises(SandboxViolation if path == world_marker else RepoCodeError) as info:
            load(sandbox, repo, "model", path=str(path))
        contained(info, "Error")


WATCH = """
    import ctypes, os, select, struct, time, torch

    def watch(folder):
        # The folder cannot be listed (Landlock), but a watch on it names each file
        # created there. Waits for the first name (the wait is a hang guard only).
        try:
            os.listdir(folder)
            listed = "listed"
        except OSError as exc:
            listed = type(exc).__name__
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK)
        if fd < 0 or libc.inotify_add_watch(fd, folder.encode(), 0x100) < 0:  # IN_CREATE
            seen = f"refused: errno {ctypes.get_errno()}"
        else:
            seen, end = "", time.monotonic() + 60
            while not seen and time.monotonic() < end:
                if select.select([fd], [], [], 0.5)[0]:
                    data = os.read(fd, 4096)
                    seen = data[16:16 + struct.unpack_from("I", data, 12)[0]].rstrip(b"\\0")
                    seen = seen.decode()
        return {k: torch.frombuffer(bytearray(v.encode() + b"."), dtype=torch.uint8)
                for k, v in (("listed", listed), ("seen", seen))}
"""


def _text(tensors: dict[str, object], name: str) -> str:
    return tensor_bytes(tensors[name]).decode()[:-1]


def test_watching_a_folder_outside_names_the_files_made_there(
        tmp_path: Path, sandbox: Sandbox, plain_hub: PlainHub) -> None:
    outside = Path(tempfile.mkdtemp(prefix="safehub-test-watched-"))
    outside.chmod(0o755)  # readable by the sandbox's uid: only Landlock keeps it out
    repo = make_repo(tmp_path / "repo", WATCH)
    done = threading.Event()

    def someone_else_works_there() -> None:
        while not done.wait(0.2):
            name = outside / f"private-{time.monotonic_ns()}"
            name.write_bytes(b"")
            name.unlink()

    worker = threading.Thread(target=someone_else_works_there, daemon=True)
    worker.start()
    try:
        plain = plain_hub.run("load", repo, "watch", kwargs={"folder": str(outside)})
        got = load(sandbox, repo, "watch", folder=str(outside))
    finally:
        done.set()
        worker.join()
        shutil.rmtree(outside, ignore_errors=True)
    assert _text(plain.tensors, "seen").startswith("private-"), "plain torch.hub: named"
    assert _text(got, "listed") == "PermissionError"  # Landlock hides the folder
    assert _text(got, "seen") == "refused: errno 1"  # and no watch names what is in it


@pytest.mark.parametrize("kind", ["absolute", "relative", "directory"])
def test_symlink_escape(kind: str, tmp_path: Path, world_marker: Path, sandbox: Sandbox,
                        plain_hub: PlainHub) -> None:
    world_marker.write_bytes(b"secret outside the repo")
    repo = make_repo(tmp_path / "repo", SMUGGLE)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"secret outside the repo")
    if kind == "absolute":
        (repo / "weights.bin").symlink_to(world_marker)
        name = "weights.bin"
    elif kind == "relative":
        (repo / "weights.bin").symlink_to(Path("..") / "outside" / "secret.bin")
        name = "weights.bin"
    else:
        (repo / "data").symlink_to(outside, target_is_directory=True)
        name = "data/secret.bin"
    plain = plain_hub.run("load", repo, "model", kwargs={"path": str(repo / name)})
    assert tensor_bytes(plain.tensors["weight"]) == b"secret outside the repo"

    with pytest.raises(RepoCodeError) as info:
        load(sandbox, repo, "model", path=str(repo / name))
    contained(info, "Error")



IMPORT_LINKED = """
    import torch
    def model():
        import helper  # a link to a Python file outside the repo
        return {"leak": torch.frombuffer(bytearray(helper.TOKEN.encode()), dtype=torch.uint8)}
"""


def test_module_linked_from_outside_is_not_compiled_for_the_child(
        tmp_path: Path, world_marker: Path, sandbox: Sandbox, plain_hub: PlainHub) -> None:
    # The parent compiles the repo's modules for the child, with the caller's rights and
    # outside the sandbox. A module that links to a file outside the repo must not be
    # compiled: the child would import its bytecode (the source's size and mtime, read
    # through the link, match) without ever opening the source Landlock denies it.
    world_marker.write_text('TOKEN = "AKIA-settings-outside-the-repo"\n')
    world_marker.chmod(0o600)  # even a file the sandbox's own uid could not read
    repo = make_repo(tmp_path / "repo", IMPORT_LINKED)
    (repo / "helper.py").symlink_to(world_marker)
    plain = plain_hub.run("load", repo, "model")
    assert tensor_bytes(plain.tensors["leak"]) == b"AKIA-settings-outside-the-repo"

    with pytest.raises(RepoCodeError) as info:
        load(sandbox, repo, "model")
    contained(info, "Error")
    assert "AKIA" not in info.value.diagnostics()


# --- environment and other processes ---------------------------------------------------------

READ_ENV = """
    import os, torch
    def model():
        seen = repr(sorted(os.environ.items())).encode()
        try:
            seen += open("/proc/self/environ", "rb").read()
        except OSError as exc:
            seen += repr(exc).encode()
        return {"env": torch.frombuffer(bytearray(seen), dtype=torch.uint8)}
"""


def test_environment_secrets(tmp_path: Path, secret: str, sandbox: Sandbox,
                             plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", READ_ENV)
    plain = plain_hub.run("load", repo, "model")
    assert secret.encode() in tensor_bytes(plain.tensors["env"]), "plain torch.hub leaks env"

    seen = tensor_bytes(load(sandbox, repo, "model")["env"])  # type: ignore[arg-type]
    assert secret.encode() not in seen
    assert b"SAFEHUB_TEST_SECRET" not in seen


PROC_SCAN = """
    import os, torch
    def model(tag, kill=False):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if tag.encode() in cmdline:
                if kill:
                    os.kill(int(pid), 9)
                    return {}
                data = open(f"/proc/{pid}/environ", "rb").read()
                return {"loot": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
        raise LookupError("target not found")
"""


def test_reading_other_processes_through_proc(tmp_path: Path, secret: str,
                                              decoy: subprocess.Popen[bytes], sandbox: Sandbox,
                                              plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", PROC_SCAN)
    tag = decoy.tag  # type: ignore[attr-defined]
    plain = plain_hub.run("load", repo, "model", kwargs={"tag": tag})
    assert secret.encode() in tensor_bytes(plain.tensors["loot"])

    with pytest.raises(SandboxViolation) as info:
        load(sandbox, repo, "model", tag=tag)
    contained(info, "PermissionError", "/proc")


def test_killing_a_process_found_in_proc(tmp_path: Path, decoy: subprocess.Popen[bytes],
                                         secret: str, sandbox: Sandbox,
                                         plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", PROC_SCAN)
    tag = decoy.tag  # type: ignore[attr-defined]
    with pytest.raises(SandboxViolation):
        load(sandbox, repo, "model", tag=tag, kill=True)
    assert decoy.poll() is None, "the sandbox must not reach the decoy"

    plain_hub.run("load", repo, "model", kwargs={"tag": tag, "kill": True})
    decoy.wait(timeout=10)
    assert decoy.returncode == -signal.SIGKILL, "plain torch.hub lets the repo kill it"


def test_killing_a_process_by_pid(tmp_path: Path, decoy: subprocess.Popen[bytes],
                                  sandbox: Sandbox, plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", """
        import os
        def model(pid):
            os.kill(pid, 9)
            return {}
    """)
    with pytest.raises(RepoCodeError) as info:
        load(sandbox, repo, "model", pid=decoy.pid)
    contained(info, "Error")  # no such process in the sandbox's PID namespace
    assert decoy.poll() is None

    plain_hub.run("load", repo, "model", kwargs={"pid": decoy.pid})
    assert decoy.wait(timeout=10) == -signal.SIGKILL


def test_killing_the_parent(tmp_path: Path, sandbox: Sandbox, plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", """
        import os, signal, torch
        def model():
            try:
                os.kill(os.getppid(), signal.SIGKILL)
            except OSError:
                pass
            return {"ppid": torch.tensor([os.getppid()])}
    """)
    zygote = sandbox.zygote_pid
    result = load(sandbox, repo, "model")
    assert result["ppid"].tolist() == [0]  # type: ignore[attr-defined] # parent outside the PID ns
    assert sandbox.zygote_pid == zygote, "the zygote survived"
    assert load(sandbox, repo, "model"), "and still serves requests"

    plain = plain_hub.run("load", repo, "model")
    assert plain.runner_died, "under plain torch.hub the repo kills the process that loads it"


# --- network -------------------------------------------------------------------------------


def test_tcp_connection(tmp_path: Path, tcp_sink: TcpSink, sandbox: Sandbox,
                        plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", """
        import socket, torch
        def model(port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"exfiltrated")
            return torch.nn.Linear(2, 2)
    """)
    assert plain_hub.run("load", repo, "model", kwargs={"port": tcp_sink.port}).ok
    deadline = time.monotonic() + 120  # a wait for the data, not a timing assertion
    while b"exfiltrated" not in tcp_sink.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tcp_sink.received == b"exfiltrated"
    tcp_sink.received = b""

    with pytest.raises(SandboxViolation) as info:
        load(sandbox, repo, "model", port=tcp_sink.port)
    contained(info, "PermissionError")
    time.sleep(0.2)
    assert tcp_sink.received == b""


def test_udp_datagram(tmp_path: Path, udp_sink: UdpSink, sandbox: Sandbox,
                      plain_hub: PlainHub) -> None:
    # Landlock ABI 7 does not mediate UDP: seccomp (no new sockets) and the empty network
    # namespace must stop it.
    repo = make_repo(tmp_path / "repo", """
        import socket, torch
        def model(port):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"exfiltrated", ("127.0.0.1", port))
            return torch.nn.Linear(2, 2)
    """)
    assert plain_hub.run("load", repo, "model", kwargs={"port": udp_sink.port}).ok
    assert udp_sink.received() == b"exfiltrated"

    with pytest.raises(SandboxViolation):
        load(sandbox, repo, "model", port=udp_sink.port)
    assert udp_sink.received() == b""


def test_unix_socket_to_the_host(tmp_path: Path, sandbox: Sandbox) -> None:
    # Path-named Unix sockets are another gap of Landlock ABI 7 (seccomp closes it).
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = Path(tempfile.gettempdir()) / f"safehub-test-{os.getpid()}.sock"
    server.bind(str(path))
    server.listen(1)
    try:
        repo = make_repo(tmp_path / "repo", """
            import socket
            def model(path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return {}
        """)
        with pytest.raises(SandboxViolation):
            load(sandbox, repo, "model", path=str(path))
    finally:
        server.close()
        path.unlink()


# --- resources -----------------------------------------------------------------------------

HOGS = """
    import os, time, torch
    def spin():
        while True:
            pass
    def spin_in_children():
        for _ in range(3):
            if os.fork() == 0:
                try:
                    os.setsid()  # escape a process-group kill (denied in the sandbox)
                except OSError:
                    pass
                while True:
                    pass
        while True:
            time.sleep(1)
    def memory(how):
        # 3 GiB of address space, never touched (harmless outside the sandbox too).
        if how == "mmap":
            import mmap
            block = mmap.mmap(-1, 3 << 30)
        else:
            block = torch.empty(3 << 30, dtype=torch.uint8)
        return {"size": torch.tensor([len(block)])}
    def memfd_memory(mib):
        # Memory written into memory files, never mapped: no address-space limit counts
        # it, and one process may hold a file per descriptor.
        fds, chunk, held = [], b"\\xa5" * (1 << 20), 0
        while held < mib:
            fds.append(os.memfd_create("hog"))
            for _ in range(min(256, mib - held)):
                os.write(fds[-1], chunk)
                held += 1
        resident = sum(os.fstat(fd).st_blocks for fd in fds) * 512
        return {"resident": torch.tensor([resident])}
    def forks(n=40):
        made = 0
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                time.sleep(1)
                os._exit(0)
            made += 1
        return {"made": torch.tensor([made])}
"""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_cpu_hang_is_killed_at_the_timeout(tmp_path: Path, sandbox: Sandbox,
                                           plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", HOGS)
    plain = plain_hub.run("load", repo, "spin", timeout=1)
    assert plain.timed_out, "plain torch.hub hangs the caller"

    with pytest.raises(LimitExceeded) as info:
        load(sandbox, repo, "spin", limits=SandboxLimits(timeout_s=1.0))
    assert info.value.limit == "timeout" and info.value.rule_id == "SH501"
    assert "timeout_s" in (info.value.fix or "")


def test_timeout_kills_the_whole_tree(tmp_path: Path, sandbox: Sandbox) -> None:
    repo = make_repo(tmp_path / "repo", HOGS)
    zygote = sandbox.zygote_pid
    assert zygote is not None
    with pytest.raises(LimitExceeded):
        load(sandbox, repo, "spin_in_children", limits=SandboxLimits(timeout_s=1.0))
    assert _descendants(zygote) == [], "no process of the sandbox survives the kill"


def test_cpu_time_limit(tmp_path: Path, sandbox: Sandbox) -> None:
    repo = make_repo(tmp_path / "repo", HOGS)
    with pytest.raises(LimitExceeded) as info:
        load(sandbox, repo, "spin", limits=SandboxLimits(timeout_s=30, cpu_s=1))
    assert info.value.limit == "cpu"


@pytest.mark.parametrize("how", ["mmap", "torch"])
def test_memory_bomb(how: str, tmp_path: Path, sandbox: Sandbox, plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", HOGS)
    plain = plain_hub.run("load", repo, "memory", kwargs={"how": how})
    assert plain.tensors["size"].tolist() == [3 << 30], "plain torch.hub: no memory limit"

    with pytest.raises(LimitExceeded) as info:
        load(sandbox, repo, "memory", limits=SandboxLimits(timeout_s=20, memory_mb=2048),
             how=how)
    assert info.value.limit == "memory"
    assert "memory_mb" in (info.value.fix or "")


def test_memory_in_memory_files_counts_against_no_limit_and_is_refused(
        tmp_path: Path, sandbox: Sandbox, plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", HOGS)
    plain = plain_hub.run("load", repo, "memfd_memory", kwargs={"mib": 64})
    assert plain.tensors["resident"].tolist() == [64 << 20], "plain torch.hub: memfd works"

    # More than the address-space limit, held in memory files (the host's memory, which
    # 256 descriptors of 4 GiB each would exhaust): memfd_create is refused.
    with pytest.raises(SandboxViolation) as info:
        load(sandbox, repo, "memfd_memory", limits=SandboxLimits(timeout_s=30, memory_mb=2048),
             mib=2304)
    assert "Operation not permitted" in info.value.diagnostics()
    # The result still crosses in a memfd: the parent's, sent with the call.
    assert load(sandbox, make_repo(tmp_path / "ok", """
        import torch
        def model():
            return {"w": torch.ones(3)}
    """), "model")["w"].tolist() == [1.0, 1.0, 1.0]  # type: ignore[attr-defined]


AIO = """
    import ctypes, errno, torch

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    IO_SETUP, IO_DESTROY = 206, 207  # x86_64

    def _setup(n):
        ctx = ctypes.c_ulong(0)
        if libc.syscall(ctypes.c_long(IO_SETUP), ctypes.c_long(n), ctypes.byref(ctx)):
            return None, ctypes.get_errno()
        return ctx, 0

    def take_the_pool():
        # Linux AIO contexts come from one pool for the whole host (fs.aio-max-nr).
        held, taken, refused = [], 0, 0
        for n in [1 << k for k in range(16, -1, -1)]:
            while True:
                ctx, refused = _setup(n)
                if ctx is None:
                    break
                held.append(ctx)
                taken += n
        _, other = _setup(1)  # what any other program on the host now gets
        for ctx in held:
            libc.syscall(ctypes.c_long(IO_DESTROY), ctx)
        return {"taken": torch.tensor([taken]), "refused": torch.tensor([refused]),
                "other": torch.tensor([other])}
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe calls io_setup by number")
def test_the_hosts_asynchronous_io_pool_is_out_of_reach(tmp_path: Path, sandbox: Sandbox,
                                                         plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", AIO)
    plain = plain_hub.run("load", repo, "take_the_pool")
    assert plain.tensors["taken"].item() > 0, "plain torch.hub: the pool is taken"
    assert plain.tensors["other"].item() == errno.EAGAIN, "and nobody else gets a context"

    got = load(sandbox, repo, "take_the_pool")
    assert got["taken"].tolist() == [0]  # type: ignore[attr-defined]
    assert got["refused"].tolist() == [errno.EPERM]  # type: ignore[attr-defined]


TIMERS = """
    import ctypes, torch

    libc = ctypes.CDLL(None, use_errno=True)

    def take_the_signal_queue(cap=200000):
        # Each POSIX timer reserves a queued signal from the uid's RLIMIT_SIGPENDING budget
        # (kernel memory no other rlimit counts); a non-root caller's sandbox shares the
        # caller's uid, so its timers would use up the budget of all the user's programs.
        held = []
        while len(held) < cap:
            timer = ctypes.c_void_p()
            if libc.timer_create(1, None, ctypes.byref(timer)):  # CLOCK_MONOTONIC
                break
            held.append(timer)
        for timer in held:
            libc.timer_delete(timer)
        return {"made": torch.tensor([len(held)])}
"""


def test_timers_cannot_use_up_the_users_signal_queue(tmp_path: Path, sandbox: Sandbox,
                                                     plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", TIMERS)
    plain = plain_hub.run("load", repo, "take_the_signal_queue")
    assert plain.tensors["made"].item() > 1000, "plain torch.hub: the uid's whole budget"

    got = load(sandbox, repo, "take_the_signal_queue")
    assert got["made"].item() <= 64  # type: ignore[attr-defined]


def test_fork_flood(tmp_path: Path, sandbox: Sandbox, plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", HOGS)
    plain = plain_hub.run("load", repo, "forks", kwargs={"n": 40})
    assert plain.tensors["made"].tolist() == [40], "plain torch.hub: no process limit"

    zygote = sandbox.zygote_pid
    assert zygote is not None
    with pytest.raises(LimitExceeded) as info:
        load(sandbox, repo, "forks", limits=SandboxLimits(timeout_s=20, max_processes=8), n=40)
    assert info.value.limit == "processes"
    assert _descendants(zygote) == []


# --- what comes back ------------------------------------------------------------------------

RETURNS = """
    import os, torch

    class Payload:
        def __init__(self, marker):
            self.marker = marker
        def __reduce__(self):
            return (os.system, (f"touch {self.marker}",))

    class Hooked(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if os.environ.get("SAFEHUB_HOOK_MARKER"):
                open(os.environ["SAFEHUB_HOOK_MARKER"], "w").close()
            return super().__torch_function__(func, types, args, kwargs or {})

    def reduce_object(marker):
        return Payload(marker)

    def mixed_state_dict(marker):
        return {"weight": torch.ones(2), "config": {"lr": 0.1}, "hook": Payload(marker),
                "steps": 3}

    def tensor_subclass():
        return {"weight": torch.arange(4.0).as_subclass(Hooked)}

    def bare_tensor():
        return torch.ones(3)
"""


def test_returned_object_with_reduce(tmp_path: Path, world_marker: Path, sandbox: Sandbox,
                                     plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", RETURNS)
    plain = plain_hub.run("load", repo, "reduce_object", kwargs={"marker": str(world_marker)},
                          probe=True)
    assert plain.result and plain.result["type"] == "hubconf.py.Payload"
    assert plain.result["pickled"] is True
    # torch.hub hands the caller an arbitrary object; saving it runs the repo's __reduce__.
    world_marker.unlink(missing_ok=True)

    with pytest.raises(BadResult) as info:
        load(sandbox, repo, "reduce_object", marker=str(world_marker))
    assert "hubconf.py.Payload" in info.value.message and info.value.rule_id == "SH503"
    assert not world_marker.exists()


def test_state_dict_with_non_tensor_values(tmp_path: Path, world_marker: Path,
                                           sandbox: Sandbox, plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", RETURNS)
    plain = plain_hub.run("load", repo, "mixed_state_dict", kwargs={"marker": str(world_marker)},
                          probe=True)
    assert plain.result and plain.result["type"] == "builtins.dict"
    world_marker.unlink(missing_ok=True)

    # The tensors and plain values cross; the object with a __reduce__ is dropped, by name,
    # and never pickled: its payload does not run.
    result = sandbox.run(SandboxRequest.for_load(repo, "mixed_state_dict", kwargs={
        "marker": str(world_marker)}, limits=FAST))
    assert list(result.tensors) == ["weight"]
    assert result.shape is not None
    nodes = {n.prefix: n for n in result.shape.walk()}
    assert nodes["config.lr"].value == 0.1 and nodes["steps"].value == 3
    assert [(n.prefix, n.type_name) for n in result.shape.dropped()] == [
        ("hook", "hubconf.py.Payload")]
    assert not world_marker.exists()


def test_tensor_subclass_comes_back_as_a_plain_tensor(tmp_path: Path, sandbox: Sandbox) -> None:
    import torch

    repo = make_repo(tmp_path / "repo", RETURNS)
    tensors = load(sandbox, repo, "tensor_subclass")
    weight = tensors["weight"]
    assert type(weight) is torch.Tensor
    assert weight.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_bare_tensor_is_refused_with_its_type(tmp_path: Path, sandbox: Sandbox) -> None:
    repo = make_repo(tmp_path / "repo", RETURNS)
    with pytest.raises(BadResult, match=r"torch\.Tensor"):
        load(sandbox, repo, "bare_tensor")


# --- modules shadowing the trusted side -------------------------------------------------------

SHADOW_MODULE = """
    try:
        open({marker!r}, "w").write("{name} hijacked")
    except OSError:
        pass
    HIJACKED = True
"""


def test_repo_modules_shadowing_stdlib_and_safetensors(tmp_path: Path, world_marker: Path,
                                                       sandbox: Sandbox,
                                                       plain_hub: PlainHub) -> None:
    import torch

    markers = {name: Path(f"{world_marker}-{name}") for name in ("safetensors", "json", "mmap")}
    files = {
        "safetensors/__init__.py": SHADOW_MODULE.format(marker=str(markers["safetensors"]),
                                                        name="safetensors"),
        "json.py": SHADOW_MODULE.format(marker=str(markers["json"]), name="json"),
        "mmap.py": SHADOW_MODULE.format(marker=str(markers["mmap"]), name="mmap"),
    }
    repo = make_repo(tmp_path / "repo", """
        import json, mmap, safetensors, torch
        def model():
            return {"weight": torch.arange(6.0).reshape(2, 3),
                    "json_from_repo": torch.tensor([hasattr(json, "HIJACKED")]),
                    "mmap_from_repo": torch.tensor([hasattr(mmap, "HIJACKED")])}
    """, files)
    try:
        plain_hub.run("load", repo, "model")
        assert markers["safetensors"].exists(), "plain torch.hub imports the repo's module"

        for marker in markers.values():
            marker.unlink(missing_ok=True)
        tensors = load(sandbox, repo, "model")
        assert torch.equal(tensors["weight"], torch.arange(6.0).reshape(2, 3))  # type: ignore[arg-type]
        assert tensors["json_from_repo"].tolist() == [False]  # type: ignore[attr-defined]
        assert tensors["mmap_from_repo"].tolist() == [False]  # type: ignore[attr-defined]
        assert not any(m.exists() for m in markers.values())
    finally:
        for marker in markers.values():
            marker.unlink(missing_ok=True)


# --- the torch hub cache ---------------------------------------------------------------------


def test_tampering_with_the_hub_cache_and_trusted_list(tmp_path: Path, sandbox: Sandbox,
                                                       plain_hub: PlainHub) -> None:
    torch_home = tmp_path / "torch_home"
    hub = torch_home / "hub"
    cached = hub / "acme_model_main"
    cached.mkdir(parents=True)
    (hub / "trusted_list").write_text("acme_model\n")
    (cached / "hubconf.py").write_text("def model(): pass\n")
    repo = make_repo(tmp_path / "repo", """
        import os, torch, torch.hub
        def model(hub_dir):
            for d in (torch.hub.get_dir(), hub_dir):
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "trusted_list"), "a") as fh:
                    fh.write("evil_repo\\n")
                cached = os.path.join(d, "acme_model_main")
                if os.path.isdir(cached):
                    with open(os.path.join(cached, "hubconf.py"), "w") as fh:
                        fh.write("import os; os.system('echo backdoor')\\n")
            return torch.nn.Linear(2, 2)
    """)
    plain = plain_hub.run("load", repo, "model", kwargs={"hub_dir": str(hub)},
                          torch_home=torch_home)
    assert plain.ok
    assert "evil_repo" in (hub / "trusted_list").read_text()
    assert "backdoor" in (cached / "hubconf.py").read_text()
    (hub / "trusted_list").write_text("acme_model\n")
    (cached / "hubconf.py").write_text("def model(): pass\n")

    with pytest.raises(RepoCodeError):
        load(sandbox, repo, "model", hub_dir=str(hub))
    assert (hub / "trusted_list").read_text() == "acme_model\n"
    assert (cached / "hubconf.py").read_text() == "def model(): pass\n"


# --- attacks on the boundary itself -----------------------------------------------------------

FORGE = """
    import fcntl, json, os, struct, torch
    from safehub._sandbox.channel import Channel

    def _safetensors(n):
        head = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
        head = head.encode() + b" " * (-(8 + len(head)) % 8)
        return struct.pack("<Q", len(head)) + head + b"\\0" * (4 * n)

    def _result_fd():
        # The memfd the call came with (the sandbox cannot create one): the only memfd.
        for fd in range(4, 256):
            try:
                fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                return fd
            except OSError:
                pass
        raise RuntimeError("no result memfd")

    def _send(fields, fd=None):
        channel = Channel.from_fd(3)
        channel.send({"t": "result", "op": "load", **fields}, [fd] if fd is not None else [])

    def unsealed():
        fd = _result_fd()
        os.write(fd, _safetensors(1 << 20))
        _send({"keys": ["w"], "aliased": []}, fd)
        os.ftruncate(fd, 0)  # would be SIGBUS in a parent that mapped it
        os._exit(0)

    def regular_file():
        path = os.path.join(os.environ["TMPDIR"], "forged.safetensors")
        with open(path, "wb") as fh:
            fh.write(_safetensors(4))
        _send({"keys": ["w"], "aliased": []}, os.open(path, os.O_RDONLY))
        os._exit(0)

    def huge_header():
        fd = _result_fd()
        os.write(fd, struct.pack("<Q", 1 << 40) + b"{}")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        _send({"keys": [], "aliased": []}, fd)
        os._exit(0)

    def garbage_frame():
        os.write(3, struct.pack(">I", 8) + b"not json")
        os._exit(0)

    def oversized_frame():
        os.write(3, struct.pack(">I", 1 << 30))
        os._exit(0)

    def wrong_keys():
        fd = _result_fd()
        os.write(fd, _safetensors(4))
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        _send({"keys": ["w", "extra"], "aliased": []}, fd)
        os._exit(0)
"""


@pytest.mark.parametrize("entry, words", [
    ("unsealed", "not sealed"),
    ("regular_file", "not in the memory file sent with the call"),
    ("huge_header", "exceeds"),
    ("garbage_frame", "not valid JSON"),
    ("oversized_frame", "exceeds"),
    ("wrong_keys", "key order"),
])
def test_forged_results_are_refused(entry: str, words: str, tmp_path: Path,
                                    sandbox: Sandbox) -> None:
    repo = make_repo(tmp_path / "repo", FORGE)
    with pytest.raises(BadResult, match=words) as info:
        load(sandbox, repo, entry)
    assert info.value.rule_id == "SH503"
    assert load(sandbox, make_repo(tmp_path / "ok", """
        import torch
        def model():
            return {"w": torch.ones(2)}
    """), "model")["w"].tolist() == [1.0, 1.0]  # type: ignore[attr-defined]


def test_results_are_exactly_what_torch_hub_returns(tmp_path: Path, sandbox: Sandbox,
                                                    plain_hub: PlainHub) -> None:
    repo = make_repo(tmp_path / "repo", """
        import torch
        def model():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
    """)
    plain = plain_hub.run("load", repo, "model")
    assert_same_tensors(load(sandbox, repo, "model"), plain.tensors)
