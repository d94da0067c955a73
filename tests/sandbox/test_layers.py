"""Each isolation layer on its own: a child with only that layer (plus what it
technically needs) shows the behaviour blocked; a child with no layer at all shows
it allowed. The full combination is exercised by the hostile suite."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safehub.sandbox import (
    ChildCrashed,
    Layer,
    Sandbox,
    SandboxLimits,
    SandboxRequest,
    probe_layers,
)
from tests.sandbox.conftest import FAST, TcpSink, UdpSink, everything_but, make_repo

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")

IS_ROOT = os.geteuid() == 0

PROBES = r'''
import ctypes, os, socket, subprocess, time, torch

libc = ctypes.CDLL(None, use_errno=True)

def _try(fn):
    try:
        fn()
        return 1
    except OSError:
        return 0

def _out(**flags):
    return {k: torch.tensor([int(v)]) for k, v in flags.items()}

def _bytes(data):
    return {"data": torch.frombuffer(bytearray(data or b"-"), dtype=torch.uint8)}

def fds():
    return {"fds": torch.tensor(sorted(int(x) for x in os.listdir("/proc/self/fd")))}

def env():
    return _bytes(repr(sorted(os.environ.items())).encode())

def pid_file(path):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(60)
    return {}

def uid(folder):
    def write():
        open(os.path.join(folder, "created-by-sandbox"), "w").close()
    return _out(euid=os.geteuid(), write=_try(write))

def uid_map():
    return _bytes(open("/proc/self/uid_map", "rb").read())

def connect(port):
    return _out(tcp=_try(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close()))

def msg_queue(key):
    return _out(found=libc.msgget(key, 0) != -1)

def signal_pid(pid):
    pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    return _out(pid=os.getpid(), signal=_try(lambda: os.kill(pid, 0)), listed=pid in pids,
                processes=len(pids))

def new_mount_ns():
    return _out(unshare=libc.unshare(0x00020000) == 0)

def big_file(mib):
    def write():
        with open("big.bin", "wb") as fh:
            fh.write(b"x" * (mib << 20))
    return _out(written=_try(write))

def two_files(kib):
    def write(name):
        with open(name, "wb") as fh:
            fh.write(b"x" * (kib << 10))
    return _out(first=_try(lambda: write("one.bin")), second=_try(lambda: write("two.bin")))

def privileges():
    return _out(no_new_privs=libc.prctl(39, 0, 0, 0, 0), dumpable=libc.prctl(3, 0, 0, 0, 0))

def filesystem_and_network(secret, outside, tcp_port, udp_port):
    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"udp", ("127.0.0.1", udp_port))
        s.close()
    def tcp():
        socket.create_connection(("127.0.0.1", tcp_port), timeout=2).close()
    return _out(read=_try(lambda: open(secret, "rb").read()),
                write=_try(lambda: open(outside, "w").close()), tcp=_try(tcp), udp=_try(udp))

def other_processes(limit):
    # The peer of the channel is the parent; without a PID namespace its real pid.
    peer = socket.socket(fileno=3)
    try:
        pid = int.from_bytes(peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4],
                             "little")
    finally:
        peer.detach()
    import resource
    def prlimit():
        hard = resource.prlimit(pid, resource.RLIMIT_CORE)[1]
        resource.prlimit(pid, resource.RLIMIT_CORE, (limit, hard))
    nobody = 0x7EFFFFFF  # a uid without processes: the kernel answers ESRCH, seccomp EPERM
    def errno_of(call):
        try:
            call()
        except OSError as exc:
            return exc.errno
        return 0
    def ioprio_user():
        if libc.syscall(251, 3, nobody, 0) != 0:  # ioprio_set(IOPRIO_WHO_USER, ...)
            raise OSError(ctypes.get_errno(), "ioprio_set")
    own = _try(lambda: resource.prlimit(0, resource.RLIMIT_CORE, (0, 0)))
    return _out(pid=pid, prlimit=_try(prlimit), own=own,
                affinity=errno_of(lambda: os.sched_setaffinity(pid, os.sched_getaffinity(pid))),
                scheduler=errno_of(lambda: os.sched_setscheduler(
                    pid, os.sched_getscheduler(pid), os.sched_getparam(pid))),
                sched_self=_try(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
                renice_user=errno_of(lambda: os.setpriority(os.PRIO_USER, nobody, 0)),
                ioprio_user=errno_of(ioprio_user),
                nice_self=_try(lambda: os.setpriority(os.PRIO_PROCESS, 0, 1)))

def sysv_ipc():
    libc.shmget.restype = ctypes.c_int
    shm = libc.shmget(0, 1 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    if shm != -1:
        libc.shmat.restype = ctypes.c_void_p
        address = libc.shmat(shm, None, 0)
        ctypes.memset(address, 0x5A, 1 << 20)  # pages that stay when this process ends
    msg, sem = libc.msgget(0, 0o1600), libc.semget(0, 1, 0o1600)
    return _out(shm=shm != -1, msg=msg != -1, sem=sem != -1, shm_id=shm, msg_id=msg,
                sem_id=sem)

def metadata(target):
    def fchmod():
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o666)
        finally:
            os.close(fd)
    def fchmodat2():  # the call glibc uses for fchmodat(AT_SYMLINK_NOFOLLOW)
        libc.syscall.restype = ctypes.c_long
        if libc.syscall(452, -100, target.encode(), 0o666, 0) != 0:
            raise OSError(ctypes.get_errno(), "fchmodat2")
    return _out(chmod=_try(lambda: os.chmod(target, 0o666)), fchmod=_try(fchmod),
                fchmodat2=_try(fchmodat2), chown=_try(lambda: os.chown(target, -1, -1)),
                utime=_try(lambda: os.utime(target, (0, 0))),
                xattr=_try(lambda: os.setxattr(target, "user.planted", b"1")))

def copies():
    # What torch.hub code does with files in its own folder: shutil's copies set the
    # mode, times and extended attributes of what they write, tarfile too.
    import shutil, tarfile, tempfile
    root = tempfile.mkdtemp()
    src = os.path.join(root, "src.bin")
    with open(src, "wb") as fh:
        fh.write(b"weights" * 100)
    os.chmod(src, 0o640)
    os.utime(src, (1_000_000, 1_000_000))
    os.makedirs(os.path.join(root, "tree", "sub"))
    shutil.copy(src, os.path.join(root, "tree", "sub", "a.bin"))
    def same(path):
        with open(path, "rb") as fh:
            return fh.read() == b"weights" * 100
    def untar():
        with tarfile.open(os.path.join(root, "t.tar"), "w") as tar:
            tar.add(src, arcname="member.bin")
        with tarfile.open(os.path.join(root, "t.tar")) as tar:
            tar.extractall(os.path.join(root, "untarred"), filter="fully_trusted")
        assert same(os.path.join(root, "untarred", "member.bin"))
    return _out(copy=_try(lambda: shutil.copy(src, os.path.join(root, "copy.bin"))),
                copy2=_try(lambda: shutil.copy2(src, os.path.join(root, "copy2.bin"))),
                copytree=_try(lambda: shutil.copytree(os.path.join(root, "tree"),
                                                      os.path.join(root, "tree2"))),
                copystat=_try(lambda: shutil.copystat(src, os.path.join(root, "copy.bin"))),
                untar=_try(untar),
                same=same(os.path.join(root, "copy.bin")) and same(os.path.join(root, "copy2.bin"))
                and same(os.path.join(root, "tree2", "sub", "a.bin")),
                mode=os.stat(src).st_mode & 0o777)

def syscalls():
    return _out(exec=_try(lambda: subprocess.run(["/bin/true"], check=True)),
                socket=_try(lambda: socket.socket().close()),
                setsid=_try(os.setsid),
                unshare=libc.unshare(0x00020000) == 0)
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers") / "repo"
    make_repo(root, PROBES)
    os.chmod(root.parent, 0o755)
    return root


def run(sandbox: Sandbox, repo: Path, entry: str, only: set[Layer] | None,
        limits: SandboxLimits = FAST, **kwargs: Any) -> tuple[dict[str, Any], dict[Layer, str]]:
    """Run a probe with only the layers in ``only`` (None: no layer at all)."""
    skip = everything_but(*(only or ()))
    result = sandbox.run(SandboxRequest.for_load(repo, entry, kwargs=kwargs, limits=limits,
                                                 unsafe_skip_layers=skip))
    flags = {k: v.tolist() for k, v in result.tensors.items()}
    return flags, dict(result.layers_applied)


def flag(flags: dict[str, Any], name: str) -> int:
    return int(flags[name][0])


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder in the shared temp folder, owned by the test's user, mode 0755."""
    path = Path(tempfile.mkdtemp(prefix="safehub-layer-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_probe_reports_every_layer() -> None:
    status = probe_layers()
    assert set(status) == set(Layer)
    for layer, st in status.items():
        assert st.layer is layer and st.detail


def test_fds(sandbox: Sandbox, repo: Path) -> None:
    with_layer, applied = run(sandbox, repo, "fds", {Layer.FDS})
    assert Layer.FDS in applied
    # stdin/out/err on /dev/null, the channel at 3, the result memfd the call brought, and
    # the one listdir opened.
    assert set(with_layer["fds"]) <= {0, 1, 2, 3, 4, 5}
    without, _ = run(sandbox, repo, "fds", None)
    assert len(set(without["fds"]) - {0, 1, 2}) > 2, "the zygote's descriptors leak without it"


def test_env(sandbox: Sandbox, repo: Path, secret: str) -> None:
    flags, _ = run(sandbox, repo, "env", {Layer.ENV})
    seen = bytes(flags["data"])
    assert b"'HOME'" in seen and b"/nonexistent" not in seen
    assert secret.encode() not in seen
    without, _ = run(sandbox, repo, "env", None)
    assert b"/nonexistent" in bytes(without["data"])  # the zygote's own placeholder values
    # The parent's secret never reaches the zygote, whose memory every child inherits.
    zygote = sandbox.zygote_pid
    assert os.environ["SAFEHUB_TEST_SECRET"] == secret
    assert secret.encode() not in Path(f"/proc/{zygote}/environ").read_bytes()


def _child_survives_zygote(repo: Path, only: set[Layer] | None, folder: Path) -> bool:
    pid_path = folder / f"pid-{time.time_ns()}"
    errors: list[BaseException] = []
    with Sandbox() as own:
        thread = threading.Thread(target=lambda: _run_catching(own, repo, pid_path, only, errors))
        thread.start()
        deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
        while not pid_path.exists() or not pid_path.read_text():
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail(f"hang guard: the child never wrote its pid ({errors})")
            time.sleep(0.02)
        child = int(pid_path.read_text())
        zygote = own.zygote_pid
        assert zygote is not None
        os.kill(zygote, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while (alive := _alive(child)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive:
            os.kill(child, signal.SIGKILL)  # (it also holds the zygote's socket open)
        thread.join(30)
    assert errors and isinstance(errors[0], ChildCrashed)
    return alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _run_catching(sb: Sandbox, repo: Path, pid_path: Path, only: set[Layer] | None,
                  errors: list[BaseException]) -> None:
    try:
        run(sb, repo, "pid_file", only, SandboxLimits(timeout_s=60), path=str(pid_path))
    except BaseException as exc:  # handed to the test thread
        errors.append(exc)


def test_pdeathsig(repo: Path, public_dir: Path) -> None:
    # With no PID namespace, only the parent-death signal ends the child when its
    # supervisor dies.
    assert not _child_survives_zygote(repo, {Layer.PDEATHSIG}, public_dir)
    assert _child_survives_zygote(repo, None, public_dir)


@pytest.mark.skipif(not IS_ROOT, reason="the uid layer only acts when started as root")
def test_uid(sandbox: Sandbox, repo: Path, public_dir: Path) -> None:
    flags, applied = run(sandbox, repo, "uid", {Layer.UID}, folder=str(public_dir))
    assert Layer.UID in applied
    assert flag(flags, "euid") != 0 and flag(flags, "write") == 0
    without, _ = run(sandbox, repo, "uid", None, folder=str(public_dir))
    assert flag(without, "euid") == 0 and flag(without, "write") == 1


def test_userns(sandbox: Sandbox, repo: Path) -> None:
    flags, applied = run(sandbox, repo, "uid_map", {Layer.USERNS})
    assert Layer.USERNS in applied
    inside = bytes(flags["data"]).split()
    assert len(inside) == 3 and inside[2] == b"1", "one id mapped, to itself"
    without, _ = run(sandbox, repo, "uid_map", None)
    assert bytes(without["data"]).split() == Path("/proc/self/uid_map").read_bytes().split()


def test_netns(sandbox: Sandbox, repo: Path, tcp_sink: TcpSink) -> None:
    flags, applied = run(sandbox, repo, "connect", {Layer.NETNS}, port=tcp_sink.port)
    assert Layer.NETNS in applied and flag(flags, "tcp") == 0
    without, _ = run(sandbox, repo, "connect", None, port=tcp_sink.port)
    assert flag(without, "tcp") == 1


def test_ipcns(sandbox: Sandbox, repo: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x5AFE0000 + os.getpid() % 0xFFFF
    queue = libc.msgget(key, 0o1000 | 0o666)  # IPC_CREAT
    assert queue != -1
    try:
        flags, applied = run(sandbox, repo, "msg_queue", {Layer.IPCNS}, key=key)
        assert Layer.IPCNS in applied and flag(flags, "found") == 0
        without, _ = run(sandbox, repo, "msg_queue", None, key=key)
        assert flag(without, "found") == 1
    finally:
        libc.msgctl(queue, 0, None)  # IPC_RMID


def test_pidns(sandbox: Sandbox, repo: Path) -> None:
    flags, applied = run(sandbox, repo, "signal_pid", {Layer.PIDNS}, pid=os.getpid())
    assert Layer.PIDNS in applied
    assert flag(flags, "pid") == 1 and flag(flags, "signal") == 0
    without, _ = run(sandbox, repo, "signal_pid", None, pid=os.getpid())
    assert flag(without, "pid") != 1 and flag(without, "signal") == 1
    assert flag(without, "listed") == 1


def test_pidns_with_a_mount_namespace_has_its_own_proc(sandbox: Sandbox, repo: Path) -> None:
    flags, applied = run(sandbox, repo, "signal_pid", {Layer.PIDNS, Layer.MOUNTNS},
                         pid=os.getpid())
    assert "/proc shows only the sandbox's processes" in applied[Layer.PIDNS]
    assert flag(flags, "listed") == 0 and flag(flags, "processes") == 1


def test_caps(sandbox: Sandbox, repo: Path) -> None:
    # Inside a user namespace the child holds every capability over it until they drop.
    flags, applied = run(sandbox, repo, "new_mount_ns", {Layer.USERNS, Layer.CAPS})
    assert Layer.CAPS in applied and flag(flags, "unshare") == 0
    without, _ = run(sandbox, repo, "new_mount_ns", {Layer.USERNS})
    assert flag(without, "unshare") == 1


def test_rlimits(sandbox: Sandbox, repo: Path) -> None:
    limits = SandboxLimits(timeout_s=20, max_file_mb=1)
    flags, applied = run(sandbox, repo, "big_file", {Layer.RLIMITS}, limits, mib=3)
    assert Layer.RLIMITS in applied and flag(flags, "written") == 0
    without, _ = run(sandbox, repo, "big_file", None, limits, mib=3)
    assert flag(without, "written") == 1


def test_mountns_bounds_the_temp_folder_in_total(sandbox: Sandbox, repo: Path) -> None:
    # RLIMIT_FSIZE is per file; the tmpfs caps what all files together may take.
    limits = SandboxLimits(timeout_s=20, max_file_mb=1)
    flags, applied = run(sandbox, repo, "two_files", {Layer.MOUNTNS}, limits, kib=700)
    assert Layer.MOUNTNS in applied
    assert (flag(flags, "first"), flag(flags, "second")) == (1, 0)
    with_rlimits_only, _ = run(sandbox, repo, "two_files", {Layer.RLIMITS}, limits, kib=700)
    assert (flag(with_rlimits_only, "first"), flag(with_rlimits_only, "second")) == (1, 1)


def test_nonewprivs(sandbox: Sandbox, repo: Path) -> None:
    flags, applied = run(sandbox, repo, "privileges", {Layer.NONEWPRIVS})
    assert Layer.NONEWPRIVS in applied
    assert (flag(flags, "no_new_privs"), flag(flags, "dumpable")) == (1, 0)
    without, _ = run(sandbox, repo, "privileges", None)
    assert (flag(without, "no_new_privs"), flag(without, "dumpable")) == (0, 1)


def test_landlock(sandbox: Sandbox, repo: Path, public_dir: Path, tcp_sink: TcpSink,
                  udp_sink: UdpSink) -> None:
    secret = public_dir / "secret.txt"
    secret.write_text("secret")
    secret.chmod(0o644)
    args = {"secret": str(secret), "outside": str(public_dir / "written"),
            "tcp_port": tcp_sink.port, "udp_port": udp_sink.port}
    flags, applied = run(sandbox, repo, "filesystem_and_network", {Layer.LANDLOCK}, **args)
    assert Layer.LANDLOCK in applied
    assert (flag(flags, "read"), flag(flags, "write"), flag(flags, "tcp")) == (0, 0, 0)
    # The documented gap of Landlock ABI <= 7: UDP is not mediated (seccomp covers it).
    assert flag(flags, "udp") == 1
    without, _ = run(sandbox, repo, "filesystem_and_network", None, **args)
    assert (flag(without, "read"), flag(without, "write"), flag(without, "tcp"),
            flag(without, "udp")) == (1, 1, 1, 1)


def test_seccomp(sandbox: Sandbox, repo: Path) -> None:
    flags, applied = run(sandbox, repo, "syscalls", {Layer.SECCOMP})
    assert Layer.SECCOMP in applied and Layer.NONEWPRIVS in applied  # its prerequisite
    assert flags == {"exec": [0], "socket": [0], "setsid": [0], "unshare": [0]}
    if IS_ROOT:  # without any layer the child is root: everything works
        without, _ = run(sandbox, repo, "syscalls", None)
        assert without == {"exec": [1], "socket": [1], "setsid": [1], "unshare": [1]}


def test_seccomp_ignores_changing_file_metadata(sandbox: Sandbox, repo: Path,
                                                public_dir: Path) -> None:
    # Landlock does not mediate a file's mode, owner, times or extended attributes: by
    # path they work on any file the sandbox's uid owns, even one it cannot read
    # (chmod 0666 ~/.ssh/authorized_keys, when the sandbox runs as the user). seccomp
    # answers success (what torch.hub code expects, see the next test) and changes nothing.
    target = public_dir / "authorized_keys"
    target.write_text("ssh-ed25519 AAAA owner")
    target.chmod(0o600)
    before = target.stat()
    flags, applied = run(sandbox, repo, "metadata", {Layer.SECCOMP, Layer.LANDLOCK},
                         target=str(target))
    assert Layer.SECCOMP in applied and Layer.LANDLOCK in applied
    # fchmod needs read access, which Landlock alone denies here.
    assert flag(flags, "fchmod") == 0
    names = ("chmod", "fchmodat2", "chown", "utime", "xattr")
    assert {name: flag(flags, name) for name in names} == dict.fromkeys(names, 1)
    after = target.stat()
    assert (after.st_mode, after.st_mtime_ns, after.st_uid, after.st_gid) == \
        (before.st_mode, before.st_mtime_ns, before.st_uid, before.st_gid)
    assert not os.listxattr(target)
    if IS_ROOT:  # without seccomp, as the file's owner, Landlock lets it all through
        without, _ = run(sandbox, repo, "metadata", {Layer.LANDLOCK}, target=str(target))
        assert {name: flag(without, name) for name in ("chmod", "fchmodat2", "chown",
                                                       "utime", "xattr")} == \
            dict.fromkeys(("chmod", "fchmodat2", "chown", "utime", "xattr"), 1)
        assert target.stat().st_mode & 0o777 == 0o666


def test_file_copies_work_in_the_sandbox(sandbox: Sandbox, repo: Path) -> None:
    # shutil.copy/copy2/copytree/copystat and tarfile set modes and times on what they
    # write in the sandbox's own folder, and raised PermissionError when seccomp refused
    # those calls (torch.hub runs them): with every layer they now succeed, copying the
    # bytes; the modes stay as the files were created (0o640 was not applied).
    flags, applied = run(sandbox, repo, "copies", set(Layer))
    assert Layer.SECCOMP in applied and Layer.LANDLOCK in applied
    mode = flags.pop("mode")[0]
    assert {k: v[0] for k, v in flags.items()} == {
        "copy": 1, "copy2": 1, "copytree": 1, "copystat": 1, "untar": 1, "same": 1}
    assert mode != 0o640


def test_seccomp_denies_system_v_ipc(sandbox: Sandbox, repo: Path) -> None:
    # Without an IPC namespace (a host that refuses user namespaces) System V objects are
    # the host's: a segment the sandbox creates outlives it, memory its limits never see.
    names = ("shm", "msg", "sem")
    libc = ctypes.CDLL(None, use_errno=True)
    created: list[dict[str, Any]] = []
    try:
        flags, applied = run(sandbox, repo, "sysv_ipc", {Layer.SECCOMP})
        created.append(flags)
        assert Layer.SECCOMP in applied and Layer.IPCNS not in applied
        assert {name: flag(flags, name) for name in names} == dict.fromkeys(names, 0)
        without, _ = run(sandbox, repo, "sysv_ipc", None)
        created.append(without)
        assert {name: flag(without, name) for name in names} == dict.fromkeys(names, 1)
        stat = ctypes.create_string_buffer(256)  # struct shmid_ds
        assert libc.shmctl(flag(without, "shm_id"), 2, stat) == 0, (  # IPC_STAT
            "the segment outlived the sandbox")
    finally:  # IPC_RMID on whatever was created
        for ids in created:
            if flag(ids, "shm"):
                libc.shmctl(flag(ids, "shm_id"), 0, None)
            if flag(ids, "msg"):
                libc.msgctl(flag(ids, "msg_id"), 0, None)
            if flag(ids, "sem"):
                libc.semctl(flag(ids, "sem_id"), 0, 0)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe calls ioprio_set by number")
def test_seccomp_keeps_resource_controls_to_the_sandbox(sandbox: Sandbox, repo: Path) -> None:
    # Without a PID namespace (a host that refuses user namespaces) the parent's pid is
    # the channel's peer, and prlimit(), sched_set*(), setpriority(PRIO_USER) and
    # ioprio_set(WHO_USER) reach it and every process of the uid: Landlock scopes
    # signals, not these.
    import resource

    before = resource.getrlimit(resource.RLIMIT_CORE)
    # No capability layer: as root it would stop the scheduling calls on its own (the
    # child's capabilities are no superset of the parent's); an unprivileged user's
    # sandbox and parent hold none, where nothing but seccomp stops them.
    layers = {Layer.SECCOMP, Layer.LANDLOCK, Layer.RLIMITS, Layer.FDS}
    try:
        flags, applied = run(sandbox, repo, "other_processes", layers, limit=4242)
        assert Layer.SECCOMP in applied and Layer.PIDNS not in applied
        assert flag(flags, "pid") == os.getpid()
        assert flag(flags, "prlimit") == 0
        assert (flag(flags, "affinity"), flag(flags, "scheduler")) == (errno.EPERM,) * 2
        assert (flag(flags, "renice_user"), flag(flags, "ioprio_user")) == (errno.EPERM,) * 2
        assert resource.getrlimit(resource.RLIMIT_CORE) == before
        assert (flag(flags, "own"), flag(flags, "nice_self"), flag(flags, "sched_self")) == \
            (1, 1, 1)  # its own: as before
        without, _ = run(sandbox, repo, "other_processes", layers - {Layer.SECCOMP}, limit=4242)
        assert (flag(without, "prlimit"), flag(without, "affinity"),
                flag(without, "scheduler")) == (1, 0, 0)
        assert (flag(without, "renice_user"), flag(without, "ioprio_user")) == (errno.ESRCH,) * 2
        assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 4242, "the parent was reached"
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, before)
