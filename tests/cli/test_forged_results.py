"""Hostile sandbox results through the real CLI: a repository that forges the child's
result (a sealed memfd whose safetensors header describes overflowing shapes or names
that cannot be shown) gets one SH503 line and exit 1, for `load --out` (validated from
raw bytes, no torch in the parent) and for `safehub.load` (mapped with torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_bad_inputs import Cli, assert_clean_failure

FORGER = '''
import fcntl, json, os, struct
from safehub._sandbox.channel import Channel

def _sealable(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        return True
    except OSError:
        return False

def _forge(name, shape):
    head = json.dumps({name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    head = head.encode() + b" " * (-(8 + len(head)) % 8)
    # The memfd the call came with (the sandbox cannot create one): the only memfd.
    fd = next(fd for fd in range(4, 256) if _sealable(fd))
    os.write(fd, struct.pack("<Q", len(head)) + head)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    Channel.from_fd(3).send({"t": "result", "op": "load", "keys": [name], "aliased": []}, [fd])
    os._exit(0)

def overflow_70():
    _forge("huge", [2**70, 0])

def overflow_product():
    _forge("huge", [2**40, 2**40, 0])

def surrogate_name():
    _forge("a\\udc80\\nsafehub: forged", [0])
'''

CASES = ["overflow_70", "overflow_product", "surrogate_name"]


@pytest.fixture
def forger(tmp_path: Path) -> Path:
    repo = tmp_path / "forger"
    repo.mkdir()
    (repo / "hubconf.py").write_text(FORGER)
    return repo


@pytest.mark.parametrize("entry", CASES)
def test_cli_load_refuses_forged_headers_in_one_line(entry: str, cli: Cli, forger: Path,
                                                     tmp_path: Path,
                                                     isolated_torch_home: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "w.safetensors"
    result = cli("load", forger, entry, "--source", "local", "--out", out)
    assert_clean_failure(result, 1)
    assert "SH503" in result.err
    assert not out.exists()


@pytest.mark.parametrize("entry", CASES)
def test_api_load_refuses_forged_headers(entry: str, forger: Path,
                                         isolated_torch_home: Path) -> None:
    pytest.importorskip("torch")
    import safehub
    from safehub.sandbox import BadResult

    with pytest.raises(BadResult) as info:
        safehub.load(str(forger), entry, source="local")
    assert info.value.rule_id == "SH503"
    assert "\n" not in info.value.summary(surface="cli")
