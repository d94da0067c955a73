"""Keyword arguments to torch's constructors (NEWOBJ_EX) are raw memory addresses (SH108).

NEWOBJ_EX calls ``cls.__new__(cls, *args, **kwargs)`` with a dict the pickle builds.
``torch.Tensor(cdata=N)`` and the legacy typed tensors adopt the tensor at address N, and
``UntypedStorage(n, allocator=N)`` allocates through the allocator object at address N: a
pickle made only of allowed names reads and calls through any address it likes. torch
never pickles its classes with keywords.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from safehub.findings import Verdict
from tests.scanner.conftest import rules, scan_one

pytest.importorskip("torch")

_ADDRESS = b"\x8a\x05AAAAA"  # LONG1 0x4141414141: an address nothing is mapped at


def _short(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _newobj_ex(module: str, name: str, args: bytes, keyword: str) -> bytes:
    """Protocol 4: ``module.name.__new__(cls, *args, keyword=0x4141414141)``."""
    return (b"\x80\x04" + _short(module) + _short(name) + b"\x93" + args + b"}"
            + _short(keyword) + _ADDRESS + b"s\x92.")


@pytest.mark.parametrize(("module", "name", "args", "keyword"), [
    ("torch", "Tensor", b")", "cdata"),
    ("torch", "FloatTensor", b")", "cdata"),
    ("torch.storage", "UntypedStorage", b"K\x08\x85", "allocator"),
])
def test_a_raw_address_given_to_a_torch_constructor_is_refused(
        tmp_path: Path, module: str, name: str, args: bytes, keyword: str) -> None:
    path = tmp_path / "w.pkl"
    path.write_bytes(_newobj_ex(module, name, args, keyword))
    code = ("import pickle, sys, torch; print('loading', flush=True); "
            "pickle.load(open(sys.argv[1], 'rb'))")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.stdout.startswith("loading"), run
    assert run.returncode == -signal.SIGSEGV, run  # torch used the address
    report = scan_one(path)  # was CLEAN: every name in it is allowed
    assert report.verdict is Verdict.UNSAFE and rules(report) == {"SH108"}


def test_an_empty_keyword_dict_is_no_finding(tmp_path: Path) -> None:
    path = tmp_path / "w.pkl"
    path.write_bytes(b"\x80\x04" + _short("torch") + _short("Tensor") + b"\x93)}\x92.")
    assert scan_one(path).verdict is Verdict.CLEAN
