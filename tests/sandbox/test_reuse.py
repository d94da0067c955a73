"""Warm children (``Sandbox.run(..., reuse=...)``): calls of one repository share a child
that imported hubconf.py once and forks one grandchild per call, as torch.hub shares its
``sys.modules``; nothing a call leaves behind reaches the next one, and any doubt ends
the warm child."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from safehub.sandbox import (
    ChildCrashed,
    Layer,
    LimitExceeded,
    RepoCodeError,
    Sandbox,
    SandboxRequest,
)
from tests.forked import run_forked
from tests.sandbox.conftest import FAST, make_repo

# helper.py draws a token when it is imported, hubconf.py one each time it is executed.
HELPER = """
    import os
    TOKEN = int.from_bytes(os.urandom(6), "little")
"""

HUBCONF = '''
    import os
    import signal
    import socket
    import time

    import torch

    import helper

    HUBCONF_TOKEN = int.from_bytes(os.urandom(6), "little")
    if not os.path.exists("import-made.txt"):  # the warm child's import: its temp folder
        with open("import-made.txt", "w") as fh:
            fh.write("made by the import")
    ABOVE = os.path.join(os.environ["TMPDIR"], "..")


    def probe():
        return {"helper": torch.tensor([helper.TOKEN]),
                "hubconf": torch.tensor([HUBCONF_TOKEN]),
                "pid": torch.tensor([os.getpid()])}


    def _forge_forever():
        # A process the call leaves behind: it tries to speak on every descriptor it
        # has (the call's channel, any other channel) with a frame a later call would
        # take for its own error.
        from safehub._sandbox.channel import Channel

        frame = {"t": "error", "kind": "exception", "phase": "call", "type": "Forged",
                 "message": "forged by a leftover process"}
        time.sleep(0.5)  # its own call has ended by then (its result was sent)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            for fd in range(3, 64):
                try:
                    sock = socket.socket(fileno=os.dup(fd))
                except OSError:
                    continue
                try:
                    Channel(sock).send(frame)
                except Exception:
                    pass
                finally:
                    sock.close()
            time.sleep(0.05)


    def dirty():
        helper.LEFT = "from the first call"
        globals()["HUBCONF_LEFT"] = 1
        with open("left.txt", "w") as fh:
            fh.write("x")
        for name in ("left-above.txt", "import-made.txt"):
            try:
                with open(os.path.join(ABOVE, name), "a") as fh:
                    fh.write(" changed by a call")
            except OSError:
                pass  # read-only for a call
        pid = os.fork()
        if pid == 0:
            try:
                _forge_forever()
            finally:
                os._exit(0)
        return {"leftover": torch.tensor([pid])}


    def _alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        return 1


    def _changed(path):
        return os.path.exists(path) and "changed" in open(path).read()


    def clean(leftover):
        time.sleep(2)  # the leftover would have spoken by now
        return {"module_global": torch.tensor([hasattr(helper, "LEFT")]),
                "hubconf_global": torch.tensor(["HUBCONF_LEFT" in globals()]),
                "cwd_file": torch.tensor([os.path.exists("left.txt")]),
                "file_above": torch.tensor([os.path.exists(
                    os.path.join(ABOVE, "left-above.txt"))]),
                "import_file_changed": torch.tensor([_changed(
                    os.path.join(ABOVE, "import-made.txt"))]),
                "leftover_alive": torch.tensor([_alive(leftover)]),
                "helper": torch.tensor([helper.TOKEN])}


    def sleep():
        time.sleep(60)


    def crash():
        os._exit(7)


    def fail():
        raise ValueError("repo code failed")
'''


@pytest.fixture(scope="module")
def sb(secret: str) -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", HUBCONF, {"helper.py": HELPER})


def load(sb: Sandbox, repo: Path, entry: str = "probe", *, reuse: str | None = "k",
         **kwargs: Any) -> dict[str, int]:
    limits = kwargs.pop("limits", FAST)
    skip = kwargs.pop("skip", frozenset())
    request = SandboxRequest.for_load(repo, entry, kwargs=kwargs, limits=limits,
                                      unsafe_skip_layers=skip)
    result = sb.run(request, reuse=reuse)
    return {k: int(v.item()) for k, v in result.tensors.items()}


def test_second_call_is_served_by_the_warm_child_without_importing_again(
        sb: Sandbox, repo: Path) -> None:
    first = load(sb, repo)
    second = load(sb, repo)
    assert sb.warm_children() >= 1
    # helper.py was imported once (the warm child's sys.modules), hubconf.py executed
    # for each call (as torch.hub does), each call in a process of its own (a grandchild
    # of the PID namespace's init, the warm child).
    assert second["helper"] == first["helper"]
    assert second["hubconf"] != first["hubconf"]
    assert first["pid"] != 1 and second["pid"] != 1 and first["pid"] != second["pid"]


def test_another_key_gets_another_child(sb: Sandbox, repo: Path, tmp_path: Path) -> None:
    base = load(sb, repo, reuse="policy-a")["helper"]
    assert load(sb, repo, reuse="policy-a")["helper"] == base
    # Another identity (content, policy, fetcher), other limits, other layers, another
    # repository: another child, which imports helper.py itself.
    assert load(sb, repo, reuse="policy-b")["helper"] != base
    assert load(sb, repo, reuse="policy-a", limits=replace(FAST, memory_mb=4000))["helper"] \
        != base
    assert load(sb, repo, reuse="policy-a", skip=frozenset({Layer.NETNS}))["helper"] != base
    other = make_repo(tmp_path / "other", HUBCONF, {"helper.py": HELPER})
    assert load(sb, other, reuse="policy-a")["helper"] != base
    assert sb.warm_children() <= 3  # bounded: least recently used closed first


def test_nothing_of_a_call_reaches_the_next(sb: Sandbox, repo: Path) -> None:
    warm = load(sb, repo)["helper"]
    leftover = load(sb, repo, "dirty")["leftover"]
    after = load(sb, repo, "clean", leftover=leftover)
    assert after["helper"] == warm, "served by the same warm child"
    assert after == {"module_global": 0, "hubconf_global": 0, "cwd_file": 0, "file_above": 0,
                     "import_file_changed": 0, "leftover_alive": 0, "helper": warm}
    # The leftover never got a frame into a later call (it would have failed with 'Forged').
    assert load(sb, repo)["helper"] == warm


def test_timeout_ends_the_warm_child_and_the_next_call_starts_cold(sb: Sandbox,
                                                                   repo: Path) -> None:
    limits = replace(FAST, timeout_s=4)
    warm = load(sb, repo, limits=limits)["helper"]
    assert load(sb, repo, limits=limits)["helper"] == warm
    count = sb.warm_children()
    with pytest.raises(LimitExceeded, match="longer than"):
        load(sb, repo, "sleep", limits=limits)
    assert sb.warm_children() == count - 1
    assert load(sb, repo, limits=limits)["helper"] != warm


def test_crash_ends_the_warm_child_and_the_next_call_starts_cold(sb: Sandbox,
                                                                 repo: Path) -> None:
    warm = load(sb, repo, reuse="crash")["helper"]
    assert load(sb, repo, reuse="crash")["helper"] == warm
    with pytest.raises(ChildCrashed, match="code 7"):
        load(sb, repo, "crash", reuse="crash")
    assert load(sb, repo, reuse="crash")["helper"] != warm


def test_an_exception_in_repo_code_keeps_the_warm_child(sb: Sandbox, repo: Path) -> None:
    warm = load(sb, repo, reuse="fail")["helper"]
    with pytest.raises(RepoCodeError, match="repo code failed"):
        load(sb, repo, "fail", reuse="fail")
    assert load(sb, repo, reuse="fail")["helper"] == warm  # as torch.hub keeps its modules


def test_without_reuse_each_call_gets_a_fresh_child(sb: Sandbox, repo: Path) -> None:
    count = sb.warm_children()
    first, second = load(sb, repo, reuse=None), load(sb, repo, reuse=None)
    assert first["helper"] != second["helper"]
    assert first["pid"] == second["pid"] == 1  # the code ran in the one-off child itself
    assert sb.warm_children() == count


def test_threads_after_the_import_mean_a_one_off_child(sb: Sandbox, tmp_path: Path) -> None:
    threaded = make_repo(tmp_path / "threaded", HUBCONF + '''
    import threading
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    ''', {"helper.py": HELPER})
    count = sb.warm_children()
    first = load(sb, threaded, reuse="threads")
    # Forking a process with threads is unsafe: the call was served where it was imported,
    # and that child was not kept.
    assert first["pid"] == 1
    assert sb.warm_children() == count
    assert load(sb, threaded, reuse="threads")["helper"] != first["helper"]


def test_without_a_pid_namespace_there_is_no_reuse(sb: Sandbox, repo: Path) -> None:
    # Without a PID namespace of its own the warm child could not end every process a
    # call started (kill(-1) would reach the user's other processes).
    skip = frozenset({Layer.PIDNS})
    first = load(sb, repo, reuse="nopidns", skip=skip)
    second = load(sb, repo, reuse="nopidns", skip=skip)
    assert first["helper"] != second["helper"]


def test_a_warm_child_whose_cleanup_was_disabled_is_not_reused(sb: Sandbox,
                                                              tmp_path: Path) -> None:
    # Import-time code runs in the warm child itself and can disable its cleanup; the
    # parent then sees (in /proc, not from the sandbox's word) a process left over from
    # a call and starts the next call cold.
    sabotaged = make_repo(tmp_path / "sabotaged", HUBCONF + '''
    import safehub._sandbox.child as _child
    _child._end_others = lambda: None
    ''', {"helper.py": HELPER})
    warm = load(sb, sabotaged, reuse="sabotaged")["helper"]
    assert load(sb, sabotaged, reuse="sabotaged")["helper"] == warm  # nothing left yet
    leftover = load(sb, sabotaged, "dirty", reuse="sabotaged")["leftover"]
    after = load(sb, sabotaged, "clean", reuse="sabotaged", leftover=leftover)
    assert after["helper"] != warm, "a new child"
    assert after["leftover_alive"] == 0


def test_a_calls_arguments_never_reach_a_later_call(sb: Sandbox, tmp_path: Path) -> None:
    # As tests/sandbox/test_memory.py, through one warm child: the arguments go to the
    # call's grandchild alone, never through the warm child a later grandchild is forked
    # from. (The oracle leaves out Landlock and not-dumpable to read /proc/self/maps.)
    from tests.sandbox.test_memory import HUBCONF as SEARCH
    from tests.sandbox.test_memory import ORACLE

    repo = make_repo(tmp_path / "search", SEARCH)

    def run(entry: str, **kwargs: Any) -> dict[str, Any]:
        return sb.run(SandboxRequest.for_load(repo, entry, kwargs=kwargs, limits=FAST,
                                              unsafe_skip_layers=ORACLE),
                      reuse="memory").tensors

    found = {}
    for pad in (0, 400, 6000, 30000):
        secret = "SAFEHUB-arg-" + secrets.token_hex(12)
        run("take", secret=secret, pad="x" * pad)
        found[pad] = int(run("search", reversed_secret=secret[::-1])["hits"].item())
    assert found == dict.fromkeys(found, 1), f"earlier arguments were inherited: {found}"
    assert sb.warm_children() >= 1


def test_a_fork_of_the_caller_never_uses_or_closes_the_parents_warm_child(
        sb: Sandbox, repo: Path) -> None:
    # A forked copy of the caller (multiprocessing's fork, a server's worker) inherits the
    # Sandbox object with the parent's warm children and sockets: it must start its own
    # zygote and child, and closing its copy must leave the parent's warm child (its
    # folder included) as it was.
    warm = load(sb, repo)["helper"]

    def work() -> bytes:
        token = load(sb, repo)["helper"]
        sb.close()
        return str(token).encode()

    told = run_forked(work)
    assert int(told) != warm, "the fork was served by the parent's warm child"
    assert load(sb, repo)["helper"] == warm, "the parent's warm child was lost"


LINGER = '''
    import fcntl
    import os
    import time

    import torch

    import keep


    def _memfd(fd):
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            return True
        except OSError:
            return False


    def linger():
        # Sends its own result on the call's channel, then goes on running: the caller
        # has its result, but the call must end as a one-off child's does (a short grace,
        # then the kill), not run on unbounded by the call's time limit.
        from safehub._sandbox import layers, shape, writer
        from safehub._sandbox.channel import Channel

        flat, manifest = shape.flatten({"x": torch.zeros(1)}, scripts=False)
        tensors = writer.check_tensors(flat)
        # The memfd the call came with (the sandbox cannot create one): the only memfd.
        fd = next(fd for fd in range(4, 256) if _memfd(fd))
        packed = writer.pack(tensors, fd)
        Channel.from_fd(os.dup(layers.CHANNEL_FD)).send(
            {"t": "result", "op": "load", "keys": list(tensors), "count": packed.count,
             "size": packed.size, "aliased": packed.aliased, "shape": manifest}, [packed.fd])
        if keep.WARM is not None:  # and tells the parent, as the warm child would, it ended
            number = int(os.path.basename(os.getcwd()).rpartition("-")[2])
            Channel.from_fd(keep.WARM).send({"t": "call_done", "n": number, "code": 0,
                                             "cpu_s": 0.0, "max_rss_kb": 0})
        while True:
            time.sleep(1)
'''


def _descendants(root: int) -> list[int]:
    import os

    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                    kids = [int(x) for x in fh.read().split()]
                found += kids
                todo += kids
        except FileNotFoundError:
            continue
    return found


# Imported once, by the warm child: a copy of the warm child's own channel, which every
# call's process then inherits.
KEEP = """
    import os

    from safehub._sandbox import layers

    WARM = os.dup(layers.CHANNEL_FD) if {keep} else None
"""


@pytest.mark.parametrize("keep", [False, True], ids=["result", "result-and-call-done"])
def test_a_call_that_runs_on_after_its_result_is_ended(tmp_path: Path, keep: bool) -> None:
    import time

    repo = make_repo(tmp_path / "linger", LINGER, {"keep.py": KEEP.format(keep=keep)})
    with Sandbox() as sandbox:
        sandbox.run(SandboxRequest.for_load(repo, "linger", limits=FAST), reuse="linger")
        time.sleep(3)
        zygote = sandbox.zygote_pid
        assert zygote is not None
        # At most the warm child and its outer child (its PID namespace's parent): the
        # call's process is gone, as a one-off child's is a moment after its result.
        left = _descendants(zygote)
        assert len(left) <= 2, f"the call's process ran on after its result: {left}"


STASH = '''
    import os

    import torch


    def stash():
        # A folder its owner may write but not list: the warm child's removal cannot see
        # into it (chmod is ignored in the sandbox), so its file would outlive the call.
        os.mkdir("hidden", 0o300)
        with open(os.path.join("hidden", "big"), "wb") as fh:
            fh.write(b"x" * (1 << 20))
        return {"x": torch.zeros(1)}


    def look(n):
        above = os.path.dirname(os.getcwd())
        return {"left": torch.tensor([sum(
            os.path.exists(os.path.join(above, f"call-{i}", "hidden", "big"))
            for i in range(1, n + 1))])}
'''


def test_files_a_call_hides_from_removal_do_not_pile_up(sb: Sandbox, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "stash", STASH)

    def run(entry: str, **kwargs: Any) -> int:
        result = sb.run(SandboxRequest.for_load(repo, entry, kwargs=kwargs, limits=FAST),
                        reuse="stash")
        return int(next(iter(result.tensors.values())).item())

    for _ in range(3):
        run("stash")
    assert run("look", n=3) == 0, "files of earlier calls are still in the sandbox's folder"
