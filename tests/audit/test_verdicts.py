"""Every verdict the audit gives on real caches: clean, malicious, tampered, unsigned, untrusted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from safehub.audit import AuditReport, audit
from safehub.findings import FileReport, Verdict
from tests.audit._caches import Caches


def _audit(c: Caches, **kwargs: object) -> AuditReport:
    kwargs.setdefault("policy", c.policy)
    kwargs.setdefault("lockfile", c.lockfile)
    kwargs.setdefault("incremental", False)
    return audit([c.hub, c.hf], **kwargs)  # type: ignore[arg-type]


def _entry(result: AuditReport, path: Path | str) -> FileReport:
    wanted = os.fspath(path)
    found = [f for f in result.report.files if f.path == wanted]
    assert found, f"{wanted} not in the report: {[f.path for f in result.report.files]}"
    return found[0]


def _blocking(entry: FileReport) -> set[str]:
    return {f.rule_id for f in entry.findings if f.blocking}


def _rules(entry: FileReport) -> set[str]:
    return {f.rule_id for f in entry.findings}


@pytest.fixture(scope="module")
def result(built: Caches) -> AuditReport:
    return _audit(built)


def test_clean_files_are_clean_with_advice_only(result: AuditReport, built: Caches) -> None:
    for label in ("th-clean", "th-unrecorded", "sh-clean"):
        entry = _entry(result, built.paths[label])
        assert entry.verdict is Verdict.CLEAN, (label, entry.findings)
        assert "SH402" in _rules(entry)  # pickle format: advice to convert, not blocking
    for snap in ("hf-clean", "hf-signed"):
        entry = _entry(result, built.paths[snap] / "pytorch_model.bin")
        assert entry.verdict is Verdict.CLEAN, (snap, entry.findings)
    assert _entry(result, built.paths["hf-clean"] / "nested" / "extra.pt").verdict is \
        Verdict.CLEAN


def test_malicious_files_are_unsafe_in_every_layout(result: AuditReport, built: Caches) -> None:
    for path in (built.paths["th-evil"], built.paths["hf-evil"] / "pytorch_model.bin"):
        entry = _entry(result, path)
        assert entry.verdict is Verdict.UNSAFE
        assert "SH100" in _blocking(entry)
        assert "SH402" not in _rules(entry)


def test_the_malicious_file_really_runs_code_without_safehub(built: Caches,
                                                             tmp_path: Path) -> None:
    # What the audit flags is a live attack: torch.load(weights_only=False) runs it.
    assert not built.marker.exists()
    code = ("import sys, torch; torch.load(sys.argv[1], weights_only=False)")
    subprocess.run([sys.executable, "-c", code, str(built.paths["th-evil"])], check=False,
                   cwd=tmp_path, capture_output=True, timeout=120)
    try:
        assert built.marker.exists()
    finally:
        built.marker.unlink(missing_ok=True)


def test_tampered_files_are_caught_against_every_record(result: AuditReport,
                                                         built: Caches) -> None:
    # torch's file-name prefix, safehub's record (and the lockfile), HF's blob name.
    assert "SH400" in _blocking(_entry(result, built.paths["th-tampered"]))
    sh = _entry(result, built.paths["sh-tampered"])
    assert {"SH400", "SH300"} <= _blocking(sh)
    assert "SH400" in _blocking(_entry(result, built.paths["hf-tampered"] / "pytorch_model.bin"))
    added = _entry(result, built.paths["sh-added"])
    assert "SH400" in _blocking(added)
    assert "does not list" in next(f.message for f in added.findings if f.rule_id == "SH400")


def test_signatures_required_by_policy(result: AuditReport, built: Caches) -> None:
    good = _entry(result, built.paths["hf-signed"])
    assert good.verdict is Verdict.CLEAN, good.findings
    unsigned = _entry(result, built.paths["hf-unsigned"])
    assert _blocking(unsigned) == {"SH204"}
    # A signed file changed after signing: the blob name and the signature both say so,
    # and the signature's finding is attached to the file, not the folder.
    tampered = _entry(result, built.paths["hf-signed-tampered"] / "pytorch_model.bin")
    assert {"SH400", "SH300"} <= _blocking(tampered)
    # Repos outside the signature rule's scope need no signature.
    assert _entry(result, built.paths["hf-clean"]).verdict is Verdict.CLEAN


def test_repo_trust_and_torch_trusted_list(result: AuditReport, built: Caches) -> None:
    assert "SH201" in _blocking(_entry(result, built.paths["stranger_tools_v1.0"]))
    assert _blocking(_entry(result, built.paths["pytorch_vision_main"])) == set()
    trusted = _entry(result, built.paths["trusted_list"])
    assert {f.subject for f in trusted.findings if f.rule_id == "SH201"} == {"stranger/tools"}


def test_provenance_where_known(result: AuditReport, built: Caches) -> None:
    snap = built.paths["hf-clean"]
    prov = result.provenance[str(snap / "pytorch_model.bin")]
    assert prov.source == "huggingface" and prov.repo == "plain/clean"
    assert prov.revision == snap.name and prov.refs == ("main",)
    assert prov.path_in_repo == "pytorch_model.bin"
    assert prov.url == f"https://huggingface.co/plain/clean/resolve/{snap.name}/pytorch_model.bin"
    sh = result.provenance[str(built.paths["sh-clean"])]
    assert sh.source == "safehub-cache" and sh.url and sh.url.endswith("/weights/clean.pth")
    checkout = result.provenance[str(built.paths["sh-checkout"])]
    assert checkout.repo == "acme/tools" and checkout.revision == built.paths["sh-checkout"].name
    torch_repo = result.provenance[str(built.paths["stranger_tools_v1.0"])]
    assert (torch_repo.repo, torch_repo.ref) == ("stranger/tools", "v1.0")


def test_commit_pin_required_by_policy(built: Caches, tmp_path: Path) -> None:
    policy = tmp_path / "pinned.toml"
    policy.write_text(built.policy.read_text().replace(
        '[[signatures]]', '[repos."pytorch/vision"]\ncommit = "' + "a" * 40 + '"\n\n'
        '[[signatures]]'), encoding="utf-8")
    (tmp_path / "signer.pub").write_bytes(built.key.public_pem)
    result = _audit(built, policy=policy)
    entry = _entry(result, built.paths["pytorch_vision_main"])
    assert "SH202" in _blocking(entry)


def test_strict_block_severity_makes_advice_block(built: Caches, tmp_path: Path) -> None:
    policy = tmp_path / "strictish.toml"
    policy.write_text(built.policy.read_text() + '\n[scanner]\nblock_severity = "info"\n',
                      encoding="utf-8")
    (tmp_path / "signer.pub").write_bytes(built.key.public_pem)
    result = _audit(built, policy=policy)
    assert "SH402" in _blocking(_entry(result, built.paths["th-clean"]))


def test_changed_code_in_a_safehub_checkout(caches: Caches) -> None:
    hubconf = caches.paths["sh-checkout"] / "hubconf.py"
    os.chmod(hubconf, 0o644)
    hubconf.write_text("import os; os.system('id')\n")
    result = _audit(caches)
    entry = _entry(result, hubconf)  # not a model file, but changed: reported
    assert "SH400" in _blocking(entry)


def test_snapshot_links_that_huggingface_never_makes(caches: Caches, tmp_path: Path) -> None:
    snap = caches.paths["hf-clean"]
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes((snap / "pytorch_model.bin").read_bytes())
    (snap / "pytorch_model.bin").unlink()
    os.symlink(outside, snap / "pytorch_model.bin")
    os.symlink("../../blobs/" + "0" * 64, snap / "gone.safetensors")
    result = _audit(caches)
    moved = _entry(result, snap / "pytorch_model.bin")
    assert "SH400" in _blocking(moved)
    assert "outside" in next(f.message for f in moved.findings if f.rule_id == "SH400")
    assert _entry(result, snap / "gone.safetensors").verdict is Verdict.ERROR


def test_plain_folder_and_single_file(tmp_path: Path, built: Caches) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ok.pth").write_bytes(built.paths["th-clean"].read_bytes())
    (folder / "notes.txt").write_text("hello")
    result = audit([folder], incremental=False)
    assert [os.path.basename(f.path) for f in result.report.files] == ["ok.pth"]
    assert result.clean
    single = audit([built.paths["th-evil"]], incremental=False)
    assert single.unsafe and single.report.files[0].path == str(built.paths["th-evil"])


def test_policy_reading_torchs_trusted_list_trusts_its_entries(built: Caches,
                                                              tmp_path: Path) -> None:
    policy = tmp_path / "reads-list.toml"
    policy.write_text(built.policy.read_text().replace(
        '[trust]\n', '[trust]\nread_torch_trusted_list = true\n').replace(
        'loosen = [', 'loosen = ["trust.read_torch_trusted_list", '), encoding="utf-8")
    (tmp_path / "signer.pub").write_bytes(built.key.public_pem)
    result = _audit(built, policy=policy)
    assert "SH201" not in _rules(_entry(result, built.paths["stranger_tools_v1.0"]))
    assert not [e for e in result.report.files if e.path == str(built.paths["trusted_list"])
                and e.findings]


def test_small_files_are_checked_against_their_git_blob_ids(caches: Caches) -> None:
    snap = caches.paths["hf-clean"]
    blob = (snap / "config.json").resolve()
    assert len(blob.name) == 40  # a Git blob id, not an LFS SHA-256
    unchanged = _audit(caches)
    assert str(snap / "config.json") not in {f.path for f in unchanged.report.files}
    blob.write_bytes(b'{"trust_remote_code": true}\n')
    result = _audit(caches)
    entry = _entry(result, snap / "config.json")
    assert _blocking(entry) == {"SH400"} and "Git blob id" in entry.findings[0].message


def test_unreadable_cache_record_is_tampering(caches: Caches) -> None:
    record = Path(str(caches.paths["sh-clean"].parent) + ".json")
    os.chmod(record, 0o644)
    record.write_text("{broken")
    result = _audit(caches)
    assert "SH400" in _blocking(_entry(result, caches.paths["sh-clean"]))


def test_lockfile_is_found_in_the_working_folder(caches: Caches,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(caches.root)  # holds safehub.lock
    result = audit([caches.hub], policy=caches.policy, incremental=False)
    assert result.lockfile == str(caches.lockfile)
    assert "SH300" in _blocking(_entry(result, caches.paths["sh-tampered"]))
