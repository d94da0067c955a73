"""The scanners compared, each run as its own documentation says, and how its verdict is read.

Every competitor lives in its own virtualenv under ``benchmarks/.work/venvs/<name>`` so that
its dependencies cannot change safehub's ``.venv`` (modelaudit alone pulls ~90 packages).
A verdict is read from the tool's documented exit codes; where a tool gives "error" precedence
over "issues found" (picklescan, modelscan, modelaudit exit 2), its own report is read to see
whether it also flagged the file.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _measure import Run

__all__ = ["TOOLS", "Tool", "Verdict", "available", "setup_venvs", "venv_dir"]

WORK = Path(__file__).resolve().parent / ".work"
VENVS = WORK / "venvs"

# The CPU build of torch (an unpinned torch pulls a multi-GB CUDA build); same knob as the
# Makefile's TORCH_SPEC.
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")

# What `pip install` puts in each competitor's virtualenv. Pinned so that results reproduce.
REQUIREMENTS: dict[str, list[str]] = {
    # picklescan imports numpy to read .npy/.npz but does not declare it; ML users have it.
    "picklescan": ["picklescan==1.0.5", "numpy==2.4.6"],
    "modelscan": ["modelscan==0.8.8"],
    # fickling 0.1.12 imports typing_extensions on Python < 3.12 without declaring it.
    "fickling": ["fickling==0.1.12", "typing_extensions>=4.6"],
    # The `pytorch` extra is what its docs suggest for PyTorch models: with torch present
    # modelaudit also runs its weight-distribution analysis on .pt/.pth files.
    "modelaudit": [TORCH_SPEC, "modelaudit[pytorch]==0.2.54"],
}


class Verdict(enum.Enum):
    """What a tool said about one file."""

    CLEAN = "clean"
    FLAGGED = "flagged"
    ERROR = "error"  # crashed, refused, could not scan, timed out, or "nothing scanned"


@dataclass(frozen=True)
class Tool:
    """One row of the tables: a scanner invoked one particular way."""

    name: str  # row label
    package: str  # distribution whose version is shown
    exe: Path  # console script (or interpreter for safehub)
    note: str = ""  # policy or invocation detail shown under the table

    # Subclasses override these three.
    def command(self, paths: Sequence[Path]) -> list[str]:
        """The command a user types to scan ``paths`` (files or folders)."""
        raise NotImplementedError

    def verdict_command(self, path: Path, scratch: Path) -> list[str]:
        """The command used to read a verdict for one file (may ask for a JSON report)."""
        return self.command([path])

    def classify(self, run: Run, scratch: Path) -> tuple[Verdict, str]:
        """Verdict and, for errors, a short reason."""
        if run.timed_out:
            return Verdict.ERROR, "timed out"
        if run.rc == 0:
            return Verdict.CLEAN, ""
        if run.rc == 1:
            return Verdict.FLAGGED, ""
        return Verdict.ERROR, _reason(run)

    # Tools that take one file per invocation are timed over a corpus as a loop of runs.
    takes_folders: bool = True

    def version(self) -> str:
        python = self.exe.parent / "python"
        if not python.exists():
            return "?"
        proc = subprocess.run(
            [str(python), "-c",
             f"import importlib.metadata as m; print(m.version({self.package!r}))"],
            capture_output=True, text=True, check=False)
        return proc.stdout.strip() or "?"


_ERROR_WORDS = re.compile(
    r"error|exception|incomplete|failed|cannot|could not|unsupported|invalid", re.IGNORECASE)


def _reason(run: Run) -> str:
    """The line of a tool's output that best says why it failed: after a traceback, the
    exception; else the first line naming an error; else the last line."""
    text = run.stdout + "\n" + run.stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in text and lines:
        return f"exit {run.rc}: {lines[-1][:160]}"
    for line in lines:
        if _ERROR_WORDS.search(line) and not re.search(r"might be|please report", line, re.I):
            return f"exit {run.rc}: {line[:160]}"
    return f"exit {run.rc}: {lines[-1][:160]}" if lines else f"exit {run.rc}"


@dataclass(frozen=True)
class Safehub(Tool):
    def command(self, paths: Sequence[Path]) -> list[str]:
        # The `safehub` console script, like every competitor's; `python -m safehub` when the
        # script is not installed.
        script = self.exe.parent / "safehub"
        head = [str(script)] if script.exists() else [str(self.exe), "-m", "safehub"]
        return [*head, "scan", *map(str, paths)]


@dataclass(frozen=True)
class Picklescan(Tool):
    strict: bool = False

    def command(self, paths: Sequence[Path]) -> list[str]:
        (path,) = paths  # picklescan takes a single --path
        return [str(self.exe), *(["--strict"] if self.strict else []), "--path", str(path)]

    def classify(self, run: Run, scratch: Path) -> tuple[Verdict, str]:
        # picklescan exits 2 when any parse error occurred, even if it also found dangerous
        # globals; its summary line tells.
        verdict, reason = super().classify(run, scratch)
        if verdict is Verdict.ERROR and not run.timed_out:
            m = re.search(r"Dangerous globals: (\d+)", run.stdout)
            if m and int(m.group(1)) > 0:
                return Verdict.FLAGGED, ""
        return verdict, reason


@dataclass(frozen=True)
class Modelscan(Tool):
    def command(self, paths: Sequence[Path]) -> list[str]:
        (path,) = paths  # modelscan takes a single -p
        return [str(self.exe), "-p", str(path)]

    def verdict_command(self, path: Path, scratch: Path) -> list[str]:
        return [*self.command([path]), "-r", "json", "-o", str(scratch / "modelscan.json")]

    def classify(self, run: Run, scratch: Path) -> tuple[Verdict, str]:
        # Documented: 0 clean, 1 issues, 2 scan errors (wins over issues), 3 nothing scanned.
        if run.rc == 3 and not run.timed_out:
            return Verdict.ERROR, "exit 3: no supported files (not scanned)"
        verdict, reason = super().classify(run, scratch)
        if verdict is Verdict.ERROR and not run.timed_out:
            report = _load_json(scratch / "modelscan.json")
            if report.get("issues"):
                return Verdict.FLAGGED, ""
            errors = report.get("errors") or []
            if errors:
                reason = f"exit {run.rc}: {str(errors[0].get('description', ''))[:160]}"
        return verdict, reason


@dataclass(frozen=True)
class Fickling(Tool):
    takes_folders: bool = False

    def command(self, paths: Sequence[Path]) -> list[str]:
        (path,) = paths
        # --check-safety writes safety_results.json into the working directory by default.
        return [str(self.exe), "--check-safety", "--json-output", os.devnull, str(path)]


@dataclass(frozen=True)
class Modelaudit(Tool):
    def command(self, paths: Sequence[Path]) -> list[str]:
        # --no-cache: otherwise repeated runs time a cache lookup, not a scan.
        return [str(self.exe), "scan", "--no-cache", *map(str, paths)]

    def verdict_command(self, path: Path, scratch: Path) -> list[str]:
        return [*self.command([path]), "-f", "json", "-o", str(scratch / "modelaudit.json")]

    def classify(self, run: Run, scratch: Path) -> tuple[Verdict, str]:
        # Documented: 0 clean, 1 issues (WARNING or CRITICAL), 2 errors (wins over issues).
        verdict, reason = super().classify(run, scratch)
        if verdict is Verdict.ERROR and not run.timed_out:
            issues = _load_json(scratch / "modelaudit.json").get("issues") or []
            if any(str(i.get("severity", "")).lower() in ("warning", "critical") for i in issues):
                return Verdict.FLAGGED, ""
            if issues:  # its own words for why coverage was incomplete
                reason = f"exit {run.rc}: {str(issues[0].get('message', ''))[:160]}"
        return verdict, reason


def _load_json(path: Path) -> dict[str, Any]:
    """A tool's JSON report, or {} when it wrote none (crashed before reporting)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def venv_dir(key: str) -> Path:
    return VENVS / key


def _find(key: str, script: str) -> Path | None:
    """The tool's own venv first, then safehub's interpreter's folder, then PATH."""
    for candidate in (venv_dir(key) / "bin" / script, Path(sys.executable).parent / script):
        if candidate.exists():
            return candidate
    found = shutil.which(script)
    return Path(found) if found else None


# (constructor, row name, venv key / package, console script, note)
_SPECS: list[tuple[type[Tool], str, str, str, dict[str, object]]] = [
    (Picklescan, "picklescan", "picklescan", "picklescan", {}),
    (Picklescan, "picklescan --strict", "picklescan", "picklescan",
     {"strict": True, "note": "non-default: suspicious globals count as dangerous"}),
    (Modelscan, "modelscan", "modelscan", "modelscan", {}),
    (Fickling, "fickling", "fickling", "fickling",
     {"note": "`--check-safety`, one file per run (it takes no folders)"}),
    (Modelaudit, "modelaudit", "modelaudit", "modelaudit",
     {"note": "`scan --no-cache`; exit 1 also for WARNING-level issues, as documented"}),
]

TOOLS = [name for _, name, _, _, _ in _SPECS]


def available() -> tuple[list[Tool], list[str]]:
    """The tools found, safehub first, and a line per missing one saying how to get it."""
    tools: list[Tool] = [Safehub("safehub", "safehub", Path(sys.executable),
                                 note="`safehub scan PATH`, default policy")]
    missing: list[str] = []
    for cls, name, key, script, extra in _SPECS:
        exe = _find(key, script)
        if exe is None:
            missing.append(f"{name}: not installed; `make bench` (or `python benchmarks/run.py "
                           f"--setup`) installs it into {venv_dir(key)} "
                           f"(pip install {' '.join(REQUIREMENTS[key])})")
            continue
        tools.append(cls(name, key, exe, **extra))  # type: ignore[arg-type]
    return tools, missing


def setup_venvs(only: Sequence[str] | None = None) -> None:
    """Create the competitors' virtualenvs (idempotent: an existing one is only topped up)."""
    for key, reqs in REQUIREMENTS.items():
        if only and key not in only:
            continue
        venv = venv_dir(key)
        if not (venv / "bin" / "python").exists():
            print(f"bench: creating {venv}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"bench: pip install {' '.join(reqs)} into {venv}", file=sys.stderr)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *reqs], check=True)
