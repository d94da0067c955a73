"""Layering you can see: one class per name, and the public names keep their identity
after the implementations moved into the private packages.

The import rules themselves (layers, no private->facade import, no library->CLI import,
no cycles) are import-linter contracts in .importlinter, checked by `make lint`.
"""

from __future__ import annotations

import collections
import importlib
import pickle
import pkgutil
import warnings

import pytest

import safehub

# Duplicated class names that predate the rule, left to their owners: private helpers in
# different packages (_audit's two Entry records, _fetch/_remote's _Deadline) and the
# report formats of safehub._format next to convert's output formats. Do not add to it.
KNOWN_DUPLICATES = {"Entry", "OutputFormat", "_Deadline"}


def _classes_by_name() -> dict[str, set[type]]:
    found: dict[str, set[type]] = collections.defaultdict(set)
    for info in pkgutil.walk_packages(safehub.__path__, "safehub."):
        if info.name == "safehub.__main__":  # running it is the CLI
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__.startswith("safehub"):
                found[value.__name__].add(value)
    return found


def test_one_class_per_name() -> None:
    duplicated = {name: sorted(f"{c.__module__}.{c.__qualname__}" for c in classes)
                  for name, classes in _classes_by_name().items()
                  if len(classes) > 1 and name not in KNOWN_DUPLICATES}
    assert not duplicated, duplicated


def test_sandbox_request_and_limit_exceeded_are_one_class_each() -> None:
    import safehub.policy
    import safehub.sandbox
    from safehub._sandbox import errors, spec

    assert safehub.sandbox.SandboxRequest is spec.SandboxRequest
    assert safehub.sandbox.LimitExceeded is errors.LimitExceeded
    assert safehub.policy.IsolationRequest.__name__ == "IsolationRequest"
    # The policy's old spelling still resolves, saying what it is now.
    with pytest.warns(DeprecationWarning, match="IsolationRequest"):
        old = safehub.policy.SandboxRequest
    assert old is safehub.policy.IsolationRequest


@pytest.mark.parametrize(("public", "name", "private"), [
    ("safehub.policy", "Policy", "safehub._policy.policy"),
    ("safehub.policy", "load_policy", "safehub._policy.policy"),
    ("safehub.fetch", "Fetcher", "safehub._fetch.fetcher"),
    ("safehub.fetch", "OpenedFile", "safehub._fetch.fetcher"),
    ("safehub.hub", "load", "safehub._hub.api"),
    ("safehub.convert", "convert", "safehub._convert.convert"),
    ("safehub.signing", "SignedManifest", "safehub._signing.model"),
    ("safehub.scan", "scan_file", "safehub._scanner.entry"),
])
def test_public_names_are_the_private_objects(public: str, name: str, private: str) -> None:
    assert getattr(importlib.import_module(public), name) is \
        getattr(importlib.import_module(private), name)


def test_moved_classes_keep_their_public_identity() -> None:
    from safehub.fetch import Fetcher
    from safehub.policy import Policy, load_policy

    assert (Policy.__module__, Fetcher.__module__) == ("safehub.policy", "safehub.fetch")
    policy = load_policy("strict")
    assert repr(policy) == "Policy('strict', chain=['preset:strict'])"
    data = pickle.dumps(policy)
    assert b"safehub.policy" in data and b"_policy.policy" not in data
    again = pickle.loads(data)
    assert type(again) is Policy and again.describe() == policy.describe()


def test_public_modules_still_export_everything() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no public name resolves through a deprecation
        for name in ("policy", "fetch", "hub", "scan", "sandbox", "signing", "audit",
                     "convert", "enforce", "remote"):
            module = importlib.import_module(f"safehub.{name}")
            for exported in getattr(module, "__all__", ()):
                assert getattr(module, exported) is not None, (name, exported)
