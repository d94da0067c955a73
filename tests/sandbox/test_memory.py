"""One call's arguments never reach a later call's child.

The zygote forks every child, so whatever passed through the zygote's memory (a
spawn request with the arguments in it, freed or not) is in every later child's
memory. The oracle reads a child's own readable mappings (Landlock and the
not-dumpable flag are left out for that one child, so it can read
/proc/self/maps) and counts the earlier call's argument; the needle is handed
over reversed, so the one hit the search itself makes is the baseline.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from safehub.sandbox import Layer, Sandbox, SandboxRequest
from tests.sandbox.conftest import FAST, make_repo

HUBCONF = """
    import ctypes, torch

    def take(secret, pad):
        return {"w": torch.ones(1)}

    def search(reversed_secret):
        # No copies: the needle is built once from the reversed bytes, and memory is
        # searched in place with memmem (a bytes copy of a region would leave the
        # needle behind in the heap).
        needle = reversed_secret.encode()[::-1]
        libc = ctypes.CDLL(None)
        libc.memmem.restype = ctypes.c_void_p
        libc.memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                ctypes.c_size_t]
        with open("/proc/self/maps") as maps:
            regions = [line.split() for line in maps]
        hits = 0
        for parts in regions:
            if "r" not in parts[1][0] or (len(parts) > 5 and parts[5].startswith("[v")):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            while lo < hi:
                at = libc.memmem(lo, hi - lo, needle, len(needle))
                if not at:
                    break
                hits += 1
                lo = at + 1
        return {"hits": torch.tensor([hits])}
"""

ORACLE = frozenset({Layer.LANDLOCK, Layer.NONEWPRIVS})


def _hits(sandbox: Sandbox, repo: Path, secret: str) -> int:
    result = sandbox.run(SandboxRequest.for_load(
        repo, "search", kwargs={"reversed_secret": secret[::-1]}, limits=FAST,
        unsafe_skip_layers=ORACLE))
    return int(result.tensors["hits"].item())


def test_later_children_do_not_inherit_earlier_arguments(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", HUBCONF)
    with Sandbox() as sandbox:  # a zygote of its own: earlier tests' traffic is not counted
        # Whether a freed buffer survives until the next fork depends on the allocator
        # and the frames' sizes: try several sizes of the first call's request.
        found = {}
        for pad in (0, 100, 400, 1500, 6000, 30000):
            secret = "SAFEHUB-arg-" + secrets.token_hex(12)
            sandbox.run(SandboxRequest.for_load(repo, "take", kwargs={
                "secret": secret, "pad": "x" * pad}, limits=FAST))
            found[pad] = _hits(sandbox, repo, secret)
        assert found == dict.fromkeys(found, 1), f"earlier arguments were inherited: {found}"
        # The baseline: a needle no call ever sent is found once (the search's own copy).
        assert _hits(sandbox, repo, "SAFEHUB-arg-" + secrets.token_hex(12)) == 1
