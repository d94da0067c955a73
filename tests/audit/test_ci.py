"""CI integration: the shipped pre-commit hooks run for real, and the documented GitHub Actions
workflow uses the commands and options the CLI has."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.audit._caches import clean_checkpoint
from tests.conftest import REPO

_GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("true",)


def _pre_commit() -> str:
    exe = shutil.which("pre-commit", path=str(Path(sys.executable).parent))
    if exe is None or shutil.which("git") is None:
        pytest.skip("pre-commit (dev extra) or git is not installed")
    return exe


def _git(*args: str, cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def test_manifest_is_valid_for_pre_commit(tmp_path: Path) -> None:
    exe = _pre_commit()
    proc = subprocess.run([exe, "validate-manifest", str(REPO / ".pre-commit-hooks.yaml")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pc")})
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_hook_refuses_unsafe_model_files_and_passes_clean_ones(tmp_path: Path) -> None:
    exe = _pre_commit()
    env = {**os.environ, **_GIT_ENV, "PRE_COMMIT_HOME": str(tmp_path / "pc"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SAFEHUB_POLICY", None)
    # The hook repository: the shipped manifest, committed.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    shutil.copy(REPO / ".pre-commit-hooks.yaml", hooks)
    _git("init", "-q", cwd=hooks, env=env)
    _git("add", ".", cwd=hooks, env=env)
    _git("commit", "-q", "-m", "hooks", cwd=hooks, env=env)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=hooks, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    # A project using it.
    project = tmp_path / "project"
    project.mkdir()
    _git("init", "-q", cwd=project, env=env)
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hooks}\n    rev: {rev}\n    hooks:\n"
        "      - id: safehub-scan-system\n")
    (project / "good.pt").write_bytes(clean_checkpoint(1))
    (project / "pytorch_model.bin").write_bytes(clean_checkpoint(2))
    (project / "notes.txt").write_text("not a model")
    (project / "evil.pkl").write_bytes(pickle.dumps({"x": _Payload()}))

    def run(*files: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "run", "--files", *files], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)

    clean = run("good.pt", "pytorch_model.bin", "notes.txt")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Passed" in clean.stdout
    bad = run("good.pt", "evil.pkl")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "SH100" in bad.stdout and "evil.pkl" in bad.stdout
    skipped = run("notes.txt")
    assert skipped.returncode == 0 and "no files to check" in skipped.stdout


def test_documented_workflow_uses_real_options() -> None:
    workflow = (REPO / "docs" / "github-actions-safehub.yml").read_text()
    assert "github/codeql-action/upload-sarif" in workflow
    assert "security-events: write" in workflow
    for command in ("safehub scan", "safehub audit"):
        assert command in workflow
    from safehub.cli import _parser

    for command, options in (("scan", ["-f", "-o", "--policy"]),
                             ("audit", ["-f", "-o", "--policy", "--state", "--lockfile"])):
        parser = _parser(command)
        text = parser.format_help() + _sub_help(parser, command)
        for option in options:
            assert option in text and option in workflow, (command, option)


def _sub_help(parser: object, command: str) -> str:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command].format_help()
    return ""
