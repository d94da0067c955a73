"""One generated file per attack family: it really fires without safehub, and is blocked.

The files are built by ``_attacks.py`` (opcodes by hand, torch.save, numpy, joblib, zip and
tar archives laid out field by field). All of them are loaded the way a victim would, in one
throwaway subprocess working in a private folder: each payload creates a marker file there.
Then each is scanned: the verdict must be unsafe, with the rule that names the technique.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.scan import scan
from tests.scanner._attacks import ALL_IDS, ATTACKS, BY_ID, build_all
from tests.scanner.conftest import fire_cases, rules, scan_one


@pytest.fixture(scope="module")
def attack_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("attacks"))


@pytest.fixture(scope="module")
def fired(attack_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Markers created when every attack is loaded by its victim's loader, without safehub."""
    markers = tmp_path_factory.mktemp("markers")
    return fire_cases([(attack_files[a.id], a.loader, a.setup) for a in ATTACKS], markers)


@pytest.mark.parametrize("attack_id", ALL_IDS)
def test_attack_fires_without_safehub(attack_id: str, fired: set[str]) -> None:
    attack = BY_ID[attack_id]
    if not attack.fires:
        assert attack_id not in fired
        pytest.skip("no standard loader reads this record; refused as hidden content")
    assert attack_id in fired, f"{attack_id} did not fire when loaded with {attack.loader}"


@pytest.mark.parametrize("attack_id", ALL_IDS)
def test_attack_is_blocked(attack_id: str, attack_files: dict[str, Path]) -> None:
    attack = BY_ID[attack_id]
    report = scan_one(attack_files[attack_id])
    assert report.verdict is Verdict.UNSAFE, [f.message for f in report.findings]
    missing = attack.rules - rules(report)
    assert not missing, f"expected {sorted(missing)}; got {[f.message for f in report.findings]}"


def test_every_attack_in_one_folder_scan_is_unsafe(attack_files: dict[str, Path]) -> None:
    folder = next(iter(attack_files.values())).parent
    report = scan(folder)
    by_path = {Path(f.path).name: f for f in report.files}
    for attack_id, path in attack_files.items():
        assert by_path[path.name].verdict is Verdict.UNSAFE, attack_id


def test_findings_say_what_the_payload_would_do(attack_files: dict[str, Path]) -> None:
    report = scan_one(attack_files["os_system_protocol_2"])
    finding = next(f for f in report.findings if f.rule_id == "SH100")
    assert finding.subject == "posix.system"
    assert "touch os_system_protocol_2" in finding.payload
    assert finding.offset is not None
