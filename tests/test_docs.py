"""The README's shell examples run as written, and SECURITY.md names a real reporting channel.

Every command line in the README's shell blocks is accounted for: run in a scratch folder
holding what the text assumes (``./model``, ``ml-platform.pem``, ``./my_repo``,
``model.pth``), or listed in ``NEEDS_NETWORK`` with the reason it cannot run here. Where the
README shows output, the output must match.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()

# Commands that reach GitHub or a host's real caches: not run in tests, by design.
NEEDS_NETWORK = {
    "safehub load pytorch/vision:v0.20.0 resnet18 weights=DEFAULT --out resnet18.safetensors",
    "safehub list pytorch/vision",
    "safehub help pytorch/vision resnet18",
    # the signature example with a certificate chain needs a CA and a detached signature
    "safehub verify ./model --certificate-chain ca.pem --signature detached.sig",
    # /srv/models and the user's own caches are not the test's to read
    "safehub audit /srv/models --policy strict --lockfile safehub.lock -f sarif -o audit.sarif",
    "safehub audit",
    "safehub audit --fix",
    # remote stores and a Dask cluster (tests/remote and tests/audit/test_dask.py run these
    # against loopback servers and a LocalCluster)
    "safehub audit hf://acme/detector s3://models/prod/",
    "safehub audit s3://registry/ --executor dask://10.0.0.5:8786 --journal audit.jsonl",
}


def _blocks() -> list[tuple[list[str], list[str]]]:
    """(commands, shown output) for each fenced shell block (no language tag)."""
    bodies: list[list[str]] = []
    current: list[str] | None = None
    fenced = False
    for line in README.split("\n"):
        if line.startswith("```"):
            if fenced:
                if current is not None:
                    bodies.append(current)
                fenced, current = False, None
            else:
                fenced, current = True, ([] if line == "```" else None)
        elif current is not None:
            current.append(line)
    found = []
    for lines in bodies:
        commands = [ln[2:] if ln.startswith("$ ") else ln for ln in lines
                    if ln.startswith(("$ safehub", "$ cd ", "safehub "))]
        output = [ln for ln in lines if not ln.startswith(("$ ", "safehub ", "make "))]
        if commands:
            found.append((commands, output))
    return found


def _strip_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command).strip()


def _scratch(folder: Path) -> Path:
    """A folder with what the README's commands assume."""
    import torch

    from tests.signing.helpers import make_key, make_model

    folder.mkdir()
    shutil.copytree(REPO / "examples", folder / "examples")
    make_model(folder / "model")
    assert make_key(folder, "ml-platform").private_path.name == "ml-platform.pem"
    repo = folder / "my_repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent("""
        dependencies = ["torch"]
        import torch
        def model(num_classes=2):
            return torch.nn.Linear(4, num_classes)
    """))
    torch.save({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, folder / "model.pth")
    return folder


@pytest.fixture
def env(tmp_path: Path, isolated_torch_home: Path) -> dict[str, str]:
    home = tmp_path / "home"  # `~/.cache` in the examples: a cache of the test's own
    (home / ".cache").mkdir(parents=True)
    shutil.copytree(REPO / "examples" / "models", home / ".cache" / "models")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "XDG_STATE_HOME": str(tmp_path / "state"), "NO_COLOR": "1", "HOME": str(home)}
    env.pop("SAFEHUB_POLICY", None)
    return env


def test_every_shell_example_is_run_or_explained() -> None:
    commands = {_strip_comment(c) for block, _ in _blocks() for c in block}
    assert commands, "no shell examples found"
    assert commands >= NEEDS_NETWORK, NEEDS_NETWORK - commands  # stale exemptions


@pytest.mark.slow
def test_readme_shell_examples_pass_as_written(tmp_path: Path, env: dict[str, str]) -> None:
    ran = 0
    outputs: list[Path] = []
    for number, (commands, shown) in enumerate(_blocks()):
        folder = _scratch(tmp_path / f"block{number}")  # each block on its own
        outputs.append(folder)
        for command in commands:
            line = _strip_comment(command)
            if line in NEEDS_NETWORK:
                continue
            proc = subprocess.run(["bash", "-c", line], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=600)
            ran += 1
            assert "Traceback" not in proc.stderr, (line, proc.stderr)
            assert proc.returncode in (0, 1), (line, proc.returncode, proc.stderr)
            if shown and len(commands) == 1:
                # A block with one command and its output: the output is what it prints.
                got = [ln for ln in (proc.stdout + proc.stderr).split("\n") if ln]
                assert sorted(got) == sorted(ln for ln in shown if ln), (line, got)
    assert ran >= 8
    assert any((f / "model" / "model.sig").is_file() for f in outputs)
    assert any((f / "model.npz").is_file() for f in outputs)
    assert any((f / "model.safetensors").is_file() for f in outputs)


def test_security_contact_is_consistent() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    urls = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]
    contact = urls["Security"]
    assert contact.startswith("https://") and "security/advisories/new" in contact
    assert contact in (REPO / "SECURITY.md").read_text()
