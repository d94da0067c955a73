"""``audit --fix``: clean pickles become safetensors, originals go to quarantine, nothing is
lost, and unsafe or tampered files and managed caches are left alone."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.audit import audit, fix
from tests.audit._caches import Caches, torch_bytes
from tests.conftest import CliResult

pytestmark = pytest.mark.slow  # starts the sandbox (torch in a zygote): a few seconds

Cli = Callable[..., CliResult]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fix_converts_clean_pickles_and_loses_nothing(caches: Caches, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    ckpt = caches.hub / "checkpoints"
    nested = ckpt / "nested.pt"
    nested.write_bytes(torch_bytes({"model": {"w": torch.arange(6.0).reshape(2, 3)},
                                    "epoch": 7, "best": [0.5, 0.25]}))
    convertible = [caches.paths["th-clean"], caches.paths["th-unrecorded"], nested]
    before = {p: _sha(p) for p in convertible}
    untouched = [caches.paths["th-evil"], caches.paths["th-tampered"], caches.paths["sh-clean"],
                 caches.paths["hf-clean"] / "pytorch_model.bin"]
    untouched_before = {p: _sha(p) for p in untouched}
    quarantine = tmp_path / "quarantine"

    result = fix(audit([caches.hub, caches.hf], policy=caches.policy, lockfile=caches.lockfile,
                       incremental=False), quarantine=quarantine, policy=caches.policy)

    done = {Path(f.original): f for f in result.fixes if f.action == "converted"}
    assert set(done) == set(convertible)
    manifests = list(quarantine.glob("*/manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert len(manifest["entries"]) == 3
    for entry in manifest["entries"]:
        original = Path(entry["original"])
        moved = Path(entry["quarantined"])
        converted = Path(entry["converted"])
        assert entry["status"] == "moved" and entry["time"]
        assert not original.exists()  # moved, not copied
        assert moved.is_file() and _sha(moved) == before[original] == entry["original_sha256"]
        assert _sha(converted) == entry["converted_sha256"]
        # The converted tensors equal the originals, as torch itself loads them.
        old = torch.load(moved, weights_only=True)
        flat = old["model"] if original == nested else old
        new = load_file(converted)
        assert set(new) == {("model." + k if original == nested else k) for k in flat}
        for key, tensor in flat.items():
            name = "model." + key if original == nested else key
            assert torch.equal(new[name], tensor) and new[name].dtype == tensor.dtype
    meta = json.loads((ckpt / "nested.safetensors.metadata.json").read_text())
    assert meta["structure"] == {"model": {"w": {"$tensor": "model.w"}}, "epoch": 7,
                                 "best": [0.5, 0.25]}
    for path, digest in untouched_before.items():
        assert path.is_file() and _sha(path) == digest
    reasons = {Path(f.original): f.reason for f in result.fixes if f.action == "skipped"}
    assert "safehub's cache" in reasons[caches.paths["sh-clean"]]
    assert "Hugging Face" in reasons[caches.paths["hf-clean"] / "pytorch_model.bin"]


def test_cli_fix_reports_what_it_did_and_is_idempotent(cli: Cli, tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a.pth").write_bytes(torch_bytes({"w": torch.ones(3, dtype=torch.bfloat16)}))
    quarantine = tmp_path / "q"
    result = cli("audit", str(folder), "--no-state", "--fix", "--quarantine", str(quarantine))
    assert result.code == 0, result.err
    assert "FIXED" in result.out and "a.safetensors" in result.out
    assert "fixed" in result.err
    assert (folder / "a.safetensors").is_file() and not (folder / "a.pth").exists()
    again = cli("audit", str(folder), "--no-state", "--fix", "--quarantine", str(quarantine))
    assert again.code == 0 and "FIXED" not in again.out
    assert len(list(quarantine.glob("*/manifest.json"))) == 1  # the second run moved nothing


def test_quarantine_only_with_fix(cli: Cli, tmp_path: Path) -> None:
    assert cli("audit", str(tmp_path), "--quarantine", str(tmp_path / "q")).code == 2
