"""Trust decided by policy files: who may supply code, which bytes, under which limits.

>>> from safehub.policy import load_policy, RepoRequest
>>> policy = load_policy("strict")
>>> decision = policy.decide(RepoRequest("pytorch/vision", ref="v0.20.0"))
>>> decision.allowed, [str(step) for step in decision.trail]

Policies are TOML files validated against a schema (``safehub policy schema``).
Presets ship with safehub: ``strict``, ``default`` and ``permissive``. A policy is
selected by argument (``--policy``, ``policy=``), else ``$SAFEHUB_POLICY``, else
``[tool.safehub] policy`` in the nearest pyproject.toml, else ``default``. A
missing or invalid policy is an error, never a silent fallback.

A policy found implicitly (the environment variable or a pyproject.toml, which an
attacker controls inside a cloned repository or a pull request's CI checkout) may
only tighten the built-in default: one that allows anything ``default`` denies is
refused with an error naming where it was found. Pass a looser policy explicitly.
Every report names the policy and how it was selected (:attr:`Policy.source`).

torch.hub's ``trust_repo`` maps onto the policy: ``True`` trusts the repo for
that call when ``trust.honor_trust_repo`` allows it; ``False``, ``"check"`` and
``None`` leave the decision to the policy (``None`` never means silent trust).
Nothing ever prompts.
"""

from __future__ import annotations

import warnings
from typing import Any

from safehub._policy.decide import (
    Decision,
    DownloadRequest,
    FileRequest,
    IsolationRequest,
    RepoRequest,
    Requirement,
    Step,
    TrustRepo,
)
from safehub._policy.policy import Policy, load_policy
from safehub._policy.select import PRESETS

__all__ = [
    "PRESETS",
    "Decision",
    "DownloadRequest",
    "FileRequest",
    "IsolationRequest",
    "Policy",
    "RepoRequest",
    "Requirement",
    "Step",
    "TrustRepo",
    "load_policy",
]


def __getattr__(name: str) -> Any:
    # The policy's request about isolation layers was also called SandboxRequest, like
    # safehub.sandbox.SandboxRequest (what the sandbox runs): one class per name now.
    if name == "SandboxRequest":
        warnings.warn("safehub.policy.SandboxRequest is now safehub.policy.IsolationRequest "
                      "(safehub.sandbox.SandboxRequest is the sandbox's run request)",
                      DeprecationWarning, stacklevel=2)
        return IsolationRequest
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
