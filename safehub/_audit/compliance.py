"""Repositories and files against the policy: trust, commit pins, URLs, signatures, format.

The policy engine decides; this module asks it the questions a cache raises after
the fact and turns each denial into a finding on the folder or file it concerns:

- a torch.hub or safehub checkout: would the policy let this repo's code be used at
  this commit (owner trusted, commit pinned)? (SH201, SH202, SH200)
- a Hugging Face snapshot or a recorded download: is its URL allowed? (SH203)
- any folder the policy's ``[[signatures]]`` cover: signed, by a trusted key, and
  matching? (SH204, SH30x)
- a clean file in a pickle-based format: advice to convert it (SH402; informational
  unless the policy blocks at ``info``, as ``strict`` does).
"""

from __future__ import annotations

import os

from safehub._audit.context import Context
from safehub._audit.model import FileTarget, RepoTarget
from safehub._audit.signatures import signature_findings
from safehub._audit.state import State
from safehub._policy.decide import Decision, DownloadRequest, RepoRequest, Requirement, Step
from safehub._policy.schema import SHA1_RE
from safehub.findings import FileReport, Finding, Verdict
from safehub.rules import Severity

__all__ = ["PICKLE_FORMATS", "file_findings", "is_pickle_format", "repo_findings"]

# Formats whose loaders unpickle (torch.load, pickle.load, joblib.load).
PICKLE_FORMATS = ("pickle", "joblib", "torch-zip", "torch-legacy", "torch-tar")
_HF_URL = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def is_pickle_format(fmt: str) -> bool:
    """Whether loading a file of this scanner format unpickles it."""
    return fmt.split(" (", 1)[0] in PICKLE_FORMATS


def _rule_for(step: Step) -> str | None:
    rule = step.rule
    if rule.startswith("downloads.offline"):
        return None  # an audit downloads nothing
    if rule.startswith(("trust.unknown_repos", "trust.denied_owners")):
        return "SH201"
    if rule.startswith("trust.require_commit_pin") or (rule.startswith("repos.")
                                                      and rule.endswith(".commit")):
        return "SH202"
    if rule.startswith("downloads.allowed_urls"):
        return "SH203"
    if rule.startswith("downloads.require_digests"):
        return "SH401"
    return "SH200"


def _denials(decision: Decision, path: str, ctx: Context, subject: str, *,
             ignore: tuple[str, ...] = ()) -> list[Finding]:
    findings = []
    for step in decision.trail:
        if step.outcome != "deny" or step.rule.startswith(ignore):
            continue
        rule_id = _rule_for(step)
        if rule_id is None:
            continue
        text = f"policy {ctx.policy.name!r}: {step.message} ({step.rule}, {step.source})"
        if decision.fix:
            text += f"; fix: {decision.fix}"
        findings.append(ctx.finding(rule_id, text, path, subject=subject))
    return findings


# --- files ------------------------------------------------------------------------------------


def file_findings(target: FileTarget, report: FileReport, ctx: Context) -> list[Finding]:
    """Policy findings for one file, given its scan."""
    findings: list[Finding] = []
    if report.verdict is Verdict.CLEAN and is_pickle_format(report.format):
        findings.append(ctx.finding(
            "SH402", f"a {report.format} file: loading it unpickles, and a pickle can carry "
            "code; convert it to safetensors (`safehub convert`, or `safehub audit --fix`)",
            target.path, subject=report.format, severity=Severity.INFO))
    if target.url and target.provenance.source != "huggingface":
        pinned = next((e.digest for e in target.expectations
                       if e.rule_id == "SH300" and e.full), None)
        decision = ctx.policy.decide(DownloadRequest(target.url, file_name=target.name or None,
                                                     known_digest=pinned))
        findings.extend(_denials(decision, target.path, ctx, target.url))
    return findings


# --- repositories -----------------------------------------------------------------------------


def repo_findings(repo: RepoTarget, ctx: Context, state: State, *,
                  rescan: bool) -> list[Finding]:
    """Policy findings for one repository folder (signatures included)."""
    source = repo.provenance.source
    if repo.kind in ("trusted-list", "cache entry"):
        return []
    if source in ("torch-hub", "safehub-cache") and repo.provenance.repo:
        return _github_repo(repo, ctx, state, rescan=rescan)
    if source == "huggingface":
        return _hf_snapshot(repo, ctx, state, rescan=rescan)
    if source == "local":
        decision = ctx.policy.decide(RepoRequest(repo.path, source="local"))
        return _signatures(repo, decision.requirements, ctx, state, rescan=rescan)
    return []


def _github_repo(repo: RepoTarget, ctx: Context, state: State, *, rescan: bool) -> list[Finding]:
    prov = repo.provenance
    name = prov.repo or ""
    ref = prov.revision or prov.ref
    hub_dir = os.path.dirname(repo.path) if prov.source == "torch-hub" else None
    decision = ctx.policy.decide(RepoRequest(name, ref=ref, hub_dir=hub_dir))
    findings = _denials(decision, repo.path, ctx, name)
    pinned = decision.requirement("commit")
    if pinned is not None and not (prov.revision and SHA1_RE.match(prov.revision)):
        findings.append(ctx.finding(
            "SH202", f"policy {ctx.policy.name!r} pins {name} to commit {pinned.value} "
            f"({pinned.rule}), but this checkout is of ref {prov.ref!r}, whose commit was not "
            "recorded", repo.path, subject=name))
    if decision.allowed:
        findings.extend(_signatures(repo, decision.requirements, ctx, state, rescan=rescan))
    return findings


def _hf_snapshot(repo: RepoTarget, ctx: Context, state: State, *,
                 rescan: bool) -> list[Finding]:
    prov = repo.provenance
    repo_id = prov.repo or ""
    url = (f"https://huggingface.co/{_HF_URL.get(prov.repo_type or 'model', '')}{repo_id}"
           f"/resolve/{prov.revision}/")
    decision = ctx.policy.decide(DownloadRequest(url))
    # Digests are per file: blobs are content-addressed, other files get SH401 of their own.
    findings = _denials(decision, repo.path, ctx, repo_id, ignore=("downloads.require_digests",))
    requirements = [*ctx.policy.decide(RepoRequest(repo.path, source="local")).requirements,
                    # Rules scoped owner/name apply to a cached repo by its id.
                    *ctx.policy.signature_requirements(repo_id)]
    findings.extend(_signatures(repo, tuple(requirements), ctx, state, rescan=rescan))
    return findings


def _signatures(repo: RepoTarget, requirements: tuple[Requirement, ...] | list[Requirement],
                ctx: Context, state: State, *, rescan: bool) -> list[Finding]:
    findings: list[Finding] = []
    done: set[str] = set()
    for requirement in requirements:
        if requirement.kind != "signature" or requirement.rule in done:
            continue
        done.add(requirement.rule)
        findings.extend(signature_findings(repo, requirement, ctx, state, rescan=rescan))
    return findings
