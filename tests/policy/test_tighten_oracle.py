"""The tightening comparison against the decision engine itself (the oracle).

For random pairs of effective policies, whenever :func:`loosenings` says the child is at
least as strict as the parent, no request may be allowed by the child that the parent
denies, and nothing the parent requires (a commit, a digest) may be missing from the
child's decision. A comparison that forgot a field, a spelling or a pattern interaction
fails here with a concrete counterexample.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from safehub._policy.decide import (
    DownloadRequest,
    FileRequest,
    IsolationRequest,
    RepoRequest,
    decide,
)
from safehub._policy.loader import LoadedPolicy
from safehub._policy.schema import LAYERS, PolicyModel
from safehub._policy.tighten import loosenings
from safehub.findings import FileReport, Finding
from safehub.rules import Severity

PIN, OTHER = "0" * 40, "f" * 40
DIGEST = "ab" * 32
OWNERS = ["acme", "pytorch", "evilcorp", "mallory"]
REPO_KEYS = ["acme/net", "acme/*", "evilcorp/*", "evilcorp/malware", "pytorch/vision"]
URLS = ["https://a.example/", "https://a.example/sub/", "https://b.example/"]
PIN_URL = "https://a.example/sub/w.pth"

rules = st.fixed_dictionaries({}, optional={
    "allow": st.booleans(),
    "commit": st.sampled_from([PIN, OTHER]),
    "entrypoints": st.sampled_from([[], ["net"], ["net", "evil"]]),
})

policies = st.fixed_dictionaries({
    "schema": st.just(1),
    "trust": st.fixed_dictionaries({}, optional={
        "owners": st.lists(st.sampled_from(OWNERS[:3]), unique=True),
        "denied_owners": st.lists(st.sampled_from(OWNERS[2:]), unique=True),
        "unknown_repos": st.sampled_from(["deny", "sandbox"]),
        "require_commit_pin": st.booleans(),
        "honor_trust_repo": st.booleans(),
    }),
    "repos": st.dictionaries(st.sampled_from(REPO_KEYS), rules, max_size=3),
    "downloads": st.fixed_dictionaries({}, optional={
        "allowed_urls": st.lists(st.sampled_from(URLS), unique=True),
        "require_digests": st.booleans(),
        "offline": st.booleans(),
        "pins": st.dictionaries(st.just(PIN_URL), st.sampled_from([DIGEST, "cd" * 32])),
    }),
    "scanner": st.fixed_dictionaries({}, optional={
        "block_severity": st.sampled_from(["info", "low", "medium", "high", "critical"]),
    }),
    "sandbox": st.fixed_dictionaries({}, optional={
        "required_layers": st.lists(st.sampled_from(LAYERS[:4]), unique=True),
    }),
})

REQUESTS: list[Any] = [
    RepoRequest(repo, ref=ref, entrypoint=entry, trust_repo=trust)
    for repo in ["acme/net", "acme/other", "evilcorp/malware", "evilcorp/other",
                 "pytorch/vision", "mallory/x"]
    for ref in (None, PIN, OTHER)
    for entry in (None, "net", "evil")
    for trust in (None, True)
] + [
    DownloadRequest(url) for url in [PIN_URL, "https://a.example/x.pth",
                                     "https://b.example/y.pth", "https://c.example/z.pth"]
] + [
    IsolationRequest({layer: None if i % 2 else "missing" for i, layer in enumerate(LAYERS)}),
    IsolationRequest(dict.fromkeys(LAYERS)),
] + [
    FileRequest(FileReport("m.pt", "torch", 1, findings=(
        Finding("SH101", severity, "a global outside the allowlist", subject="x.Y"),)))
    for severity in Severity
]


def _loaded(data: dict[str, Any]) -> LoadedPolicy:
    try:
        model = PolicyModel.model_validate(data)
    except ValidationError:
        assume(False)
        raise
    return LoadedPolicy(model=model, chain=["<generated>"])


def _only_needs_a_pin(before: Any, after: Any) -> bool:
    """The parent denied only for want of a commit pin, and the child supplies one: what
    ``require_commit_pin`` asks a policy extending it to do (not a loosening)."""
    denials = {step.rule for step in before.trail if step.outcome == "deny"}
    return denials == {"trust.require_commit_pin"} and after.requirement("commit") is not None


def _requirements(decision: Any) -> set[tuple[str, str]]:
    return {(r.kind, r.value) for r in decision.requirements}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(parent=policies, child=policies)
def test_no_loosening_means_no_request_gains(parent: dict[str, Any],
                                            child: dict[str, Any]) -> None:
    old, new = _loaded(parent), _loaded(child)
    if loosenings(old.model, new.model):
        return
    for request in REQUESTS:
        before, after = decide(old, request), decide(new, request)
        if after.allowed:
            assert before.allowed or _only_needs_a_pin(before, after), (
                request, parent, child, after.trail)
            assert _requirements(before) <= _requirements(after), (request, parent, child)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(policy=policies)
def test_a_policy_never_loosens_itself(policy: dict[str, Any]) -> None:
    loaded = _loaded(policy)
    assert loosenings(loaded.model, loaded.model) == []
