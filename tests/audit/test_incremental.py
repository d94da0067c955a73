"""Incremental audits (unchanged files are neither hashed nor scanned again) and parallelism
(any number of workers gives the same report)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safehub.audit import AuditReport, audit, default_state_path, render_audit
from tests.audit._caches import Caches, clean_checkpoint
from tests.conftest import CliResult


def _run(c: Caches, state: Path, **kwargs: object) -> AuditReport:
    return audit([c.hub, c.hf], policy=c.policy, lockfile=c.lockfile,  # type: ignore[arg-type]
                 state_file=state, **kwargs)


def _comparable(result: AuditReport) -> dict[str, object]:
    body = json.loads(render_audit(result, "json"))
    body["audit"].pop("stats")
    body["audit"].pop("state")
    return body


def test_second_run_rescans_nothing(caches: Caches, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = _run(caches, state)
    assert first.stats.scanned > 10 and first.stats.reused == 0
    assert first.stats.hashed_bytes > 0
    second = _run(caches, state)
    assert second.stats.scanned == 0
    assert second.stats.reused == first.stats.scanned
    assert second.stats.hashed_bytes == 0  # nothing re-hashed when nothing changed
    assert _comparable(second) == _comparable(first)


def test_a_changed_file_is_checked_again_even_with_its_mtime_restored(caches: Caches,
                                                                      tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    snap = caches.paths["hf-clean"]
    blob = (snap / "pytorch_model.bin").resolve()
    first = _run(caches, state)
    assert not [f for f in first.unsafe if f.path == str(snap / "pytorch_model.bin")]
    # Same size, other bytes, and the old mtime put back: only ctime betrays it.
    before = os.stat(blob)
    data = bytearray(blob.read_bytes())
    data[-30] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(blob).st_size == before.st_size
    second = _run(caches, state)
    assert second.stats.scanned == 1 and second.stats.hashed_bytes == before.st_size
    tampered = [f for f in second.unsafe if f.path == str(snap / "pytorch_model.bin")]
    assert tampered and "SH400" in {f.rule_id for f in tampered[0].findings}


def test_rescan_and_new_files(caches: Caches, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = _run(caches, state)
    (caches.hub / "checkpoints" / "new.pth").write_bytes(clean_checkpoint(77))
    second = _run(caches, state)
    assert second.stats.scanned == 1
    third = _run(caches, state, rescan=True)
    assert third.stats.scanned == first.stats.scanned + 1 and third.stats.reused == 0


def test_a_policy_change_rescans_with_the_new_options(caches: Caches, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    _run(caches, state)
    stricter = tmp_path / "p.toml"
    stricter.write_text(caches.policy.read_text() + '\n[scanner]\nmax_file_size_mb = 1000\n')
    (tmp_path / "signer.pub").write_bytes(caches.key.public_pem)
    again = audit([caches.hub, caches.hf], policy=stricter, lockfile=caches.lockfile,
                  state_file=state)
    assert again.stats.scanned > 0  # scan results made with other options are not reused
    assert again.stats.hashed_bytes == 0  # digests do not depend on options


def test_unreadable_state_is_ignored(caches: Caches, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    result = _run(caches, state)
    assert result.stats.reused == 0 and result.stats.scanned > 0
    assert json.loads(state.read_text())["version"] == 1


def test_cli_keeps_state_in_the_users_state_folder(cli: object, built: Caches) -> None:
    run = cli  # the in-process CLI fixture
    args = ["audit", str(built.hf), "--policy", str(built.policy)]
    first: CliResult = run(*args)  # type: ignore[operator]
    assert default_state_path().is_file()
    assert str(default_state_path()).startswith(os.environ["XDG_STATE_HOME"])
    second: CliResult = run(*args)  # type: ignore[operator]
    assert first.code == second.code == 1
    assert "0 scanned" in second.err
    third: CliResult = run(*args, "--rescan")  # type: ignore[operator]
    assert "0 unchanged" in third.err


def test_parallel_gives_the_same_report_as_one_worker(built: Caches) -> None:
    serial = audit([built.hub, built.hf], policy=built.policy, lockfile=built.lockfile,
                   incremental=False, workers=1)
    parallel = audit([built.hub, built.hf], policy=built.policy, lockfile=built.lockfile,
                     incremental=False, workers=3)
    assert parallel.stats.workers == 3 and serial.stats.workers == 1
    assert _comparable(parallel) == _comparable(serial)
    assert render_audit(parallel, "sarif") == render_audit(serial, "sarif")
