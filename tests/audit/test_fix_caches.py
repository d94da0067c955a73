"""``audit --fix`` on real cache layouts leaves a clean cache: the next audit is clean, the
converted file carries a name torch does not read as a digest prefix and a record the next
audit checks, content-addressed caches are never broken, originals are kept with their
manifest, a dry run changes nothing, and arguments are checked before any work."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub._audit.torch_layout import hash_prefix
from tests.audit.test_layouts import Homes, build_homes, served  # noqa: F401 (fixture)
from tests.conftest import CliResult

pytestmark = pytest.mark.slow  # starts the sandbox (torch in a zygote)

Cli = Callable[..., CliResult]


def _tree(root: Path) -> dict[str, str]:
    """Every entry under root: files by content, links by target (dangling or not)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _dangling(root: Path) -> list[Path]:
    return [Path(d) / n for d, ds, fs in os.walk(root) for n in [*ds, *fs]
            if (Path(d) / n).is_symlink() and not (Path(d) / n).exists()]


def _json(result: CliResult) -> dict[str, object]:
    data = json.loads(result.out)
    assert isinstance(data, dict)
    return data


@pytest.fixture
def homes(tmp_path: Path, served: tuple[str, Path],  # noqa: F811
          monkeypatch: pytest.MonkeyPatch) -> Homes:
    return build_homes(tmp_path / "h", served, monkeypatch, tamper=False)


def test_fix_twice_then_audit_is_clean_and_nothing_is_lost(cli: Cli, homes: Homes,
                                                          tmp_path: Path) -> None:
    quarantine = tmp_path / "q"
    ckpt = homes.checkpoint
    assert hash_prefix(ckpt.name) is not None
    original_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    hf_before = _tree(homes.hf_home)

    first = cli("audit", homes.top, "--no-state", "--fix", "--quarantine", quarantine,
                "-f", "json")
    assert first.code == 0, first.err
    fixes = {f["original"]: f for f in _json(first)["audit"]["fixes"]}  # type: ignore[attr-defined]
    done = fixes[str(ckpt)]
    assert done["action"] == "converted"
    converted = Path(done["converted"])
    # No torch digest prefix on the new name: neither torch nor the next audit reads the
    # original's prefix as the converted file's digest.
    assert hash_prefix(converted.name) is None and converted.suffix == ".safetensors"
    record = json.loads((converted.parent / (converted.name + ".safehub-fix.json")).read_text())
    assert record["converted_sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert record["original_sha256"] == original_sha
    # The Hugging Face cache is left alone, with the reason; no link dangles.
    hf_fix = fixes[str(homes.link)]
    assert hf_fix["action"] == "skipped" and "Hugging Face" in hf_fix["reason"]
    assert _tree(homes.hf_home) == hf_before and not _dangling(homes.top)

    second = cli("audit", homes.top, "--no-state", "--fix", "--quarantine", quarantine,
                 "-f", "json")
    assert second.code == 0, second.err
    assert not [f for f in _json(second)["audit"]["fixes"]  # type: ignore[attr-defined]
                if f["action"] in ("converted", "failed")]
    audit = cli("audit", homes.top, "--no-state", "-f", "json")
    assert audit.code == 0, audit.out
    files = {e["path"]: e for e in _json(audit)["files"]}  # type: ignore[attr-defined]
    assert files[str(converted)]["verdict"] == "clean"
    assert not any(f["rule_id"] == "SH400" for e in files.values() for f in e["findings"])

    # Nothing lost: one manifest, the original in quarantine with its bytes.
    manifests = list(quarantine.glob("*/manifest.json"))
    assert len(manifests) == 1
    entries = json.loads(manifests[0].read_text())["entries"]
    assert [e["original"] for e in entries] == [str(ckpt)]
    kept = Path(entries[0]["quarantined"])
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == original_sha
    assert not ckpt.exists()


def test_the_fix_record_is_checked_by_the_next_audit(cli: Cli, homes: Homes,
                                                     tmp_path: Path) -> None:
    from tests.audit._caches import clean_checkpoint

    result = cli("audit", homes.torch_home, "--no-state", "--fix", "--quarantine",
                 tmp_path / "q", "-f", "json")
    assert result.code == 0, result.err
    converted = Path(next(f["converted"] for f in _json(result)["audit"]["fixes"]  # type: ignore[attr-defined]
                          if f["action"] == "converted"))
    # Swapped after the fix (a valid safetensors file would do; any other bytes show it).
    converted.write_bytes(clean_checkpoint(77))
    again = cli("audit", homes.torch_home, "--no-state", "-f", "json")
    assert again.code == 1
    files = {e["path"]: e for e in _json(again)["files"]}  # type: ignore[attr-defined]
    assert "SH400" in [f["rule_id"] for f in files[str(converted)]["findings"]]


def test_dry_run_prints_the_plan_and_changes_nothing(cli: Cli, homes: Homes,
                                                     tmp_path: Path) -> None:
    quarantine = tmp_path / "q"
    before = _tree(homes.top)
    result = cli("audit", homes.top, "--no-state", "--fix", "--dry-run", "--quarantine",
                 quarantine)
    assert result.code == 0, result.err
    assert f"PLANNED  {homes.checkpoint}" in result.out
    assert _tree(homes.top) == before
    assert not quarantine.exists()


def test_quarantine_inside_the_tree_is_not_fixed_again(cli: Cli, homes: Homes) -> None:
    quarantine = homes.top / "quarantine"
    for _ in range(2):
        result = cli("audit", homes.top, "--no-state", "--fix", "--quarantine", quarantine,
                     "-f", "json")
        assert result.code == 0, result.err
    fixes = _json(result)["audit"]["fixes"]
    assert not [f for f in fixes if f["action"] == "converted"]  # type: ignore[union-attr]
    assert any("quarantine" in f.get("reason", "") for f in fixes)  # type: ignore[union-attr]
    assert len(list(quarantine.glob("*/manifest.json"))) == 1


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_bad_quarantine_is_a_one_line_error_before_any_work(cli: Cli, tmp_path: Path,
                                                            kind: str) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    target = blocker if kind == "file" else blocker / "q"
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.pth").write_bytes(b"\x80\x02}q\x00.")
    state = tmp_path / "state.json"
    result = cli("audit", models, "--state", state, "--fix", "--quarantine", target)
    assert result.code == 2
    assert "Traceback" not in result.err and "--quarantine" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not state.exists()  # no audit ran
    assert (models / "a.pth").is_file()
