"""The shipped presets load, validate and differ as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehub.findings import FileReport, Finding
from safehub.policy import (
    PRESETS,
    DownloadRequest,
    FileRequest,
    IsolationRequest,
    RepoRequest,
    load_policy,
)
from safehub.rules import Severity

SHA = "0123456789abcdef0123456789abcdef01234567"


def _file_with(severity: Severity) -> FileReport:
    finding = Finding("SH101", severity, "imports x.Y: test", path="m.pt", subject="x.Y")
    return FileReport(path="m.pt", format="pickle", size=10, findings=(finding,))


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name: str) -> None:
    policy = load_policy(name)
    assert policy.name == name
    assert policy.chain == [f"preset:{name}"]


def test_presets_are_found_in_the_repo_checkout() -> None:
    root = Path(__file__).resolve().parents[2] / "policies"
    assert sorted(p.stem for p in root.glob("*.toml")) == sorted(PRESETS)


def test_trusted_organisations_are_torch_hubs() -> None:
    for name in PRESETS:
        owners = load_policy(name).model.trust.owners
        assert {"pytorch", "facebookresearch", "facebookincubator", "fairinternal"} <= set(owners)


def test_unknown_repo_denied_by_strict_and_default_sandboxed_by_permissive() -> None:
    req = RepoRequest("someone/model")
    assert not load_policy("strict").decide(req).allowed
    assert not load_policy("default").decide(req).allowed
    permissive = load_policy("permissive").decide(req)
    assert permissive.allowed
    assert permissive.warnings, "permissive allows unknown repos with a warning"


def test_trust_repo_true_is_honoured_by_default_but_not_by_strict() -> None:
    req = RepoRequest("someone/model", trust_repo=True)
    assert load_policy("default").decide(req).allowed
    assert not load_policy("strict").decide(req).allowed


@pytest.mark.parametrize("value", [None, False, "check"])
def test_trust_repo_none_false_check_never_trust_silently(value: object) -> None:
    req = RepoRequest("someone/model", trust_repo=value)  # type: ignore[arg-type]
    assert not load_policy("default").decide(req).allowed


def test_strict_requires_commit_pins_default_does_not() -> None:
    req = RepoRequest("pytorch/vision", ref="main")
    strict = load_policy("strict").decide(req)
    assert not strict.allowed
    assert "commit" in strict.fix
    assert load_policy("default").decide(req).allowed


def test_strict_requires_download_digests() -> None:
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert not load_policy("strict").decide(DownloadRequest(url)).allowed
    pinned = load_policy("strict").decide(DownloadRequest(url, known_digest="ab" * 32))
    assert pinned.allowed
    assert pinned.requirement("sha256") is not None
    assert load_policy("default").decide(DownloadRequest(url)).allowed


def test_download_hosts_differ() -> None:
    url = "https://example.org/weights.pth"
    assert not load_policy("strict").decide(DownloadRequest(url)).allowed
    assert not load_policy("default").decide(DownloadRequest(url)).allowed
    assert load_policy("permissive").decide(DownloadRequest(url)).allowed


def test_block_severity_differs() -> None:
    info, low, medium = (_file_with(s) for s in (Severity.INFO, Severity.LOW, Severity.MEDIUM))
    strict, default, permissive = (load_policy(n) for n in ("strict", "default", "permissive"))
    assert not strict.decide(FileRequest(info)).allowed, "strict: every finding blocks"
    assert default.decide(FileRequest(info)).allowed
    assert not default.decide(FileRequest(low)).allowed
    assert permissive.decide(FileRequest(medium)).allowed, "permissive: medium only warns"
    assert permissive.decide(FileRequest(medium)).warnings


def test_sandbox_layers_required_differ() -> None:
    no_userns = {"userns": "forbidden by the host", "netns": "needs userns"}
    available = {layer: None for layer in load_policy("strict").model.sandbox.required_layers}
    available.update(no_userns)
    assert not load_policy("strict").decide(IsolationRequest(available)).allowed
    default = load_policy("default").decide(IsolationRequest(available))
    assert default.allowed
    assert default.warnings, "a missing optional layer is reported"
    no_seccomp = dict(available, seccomp="libseccomp missing")
    denied = load_policy("default").decide(IsolationRequest(no_seccomp))
    assert not denied.allowed
    assert "seccomp" in denied.fix


def test_policy_layer_names_are_the_sandbox_layers() -> None:
    from safehub._policy.schema import LAYERS
    from safehub.sandbox import Layer

    assert set(LAYERS) == {layer.value for layer in Layer}
