"""Property tests for the parsers that read untrusted input: they fail cleanly, never crash."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from safehub._signing.bundle import BundleError, parse_bundle
from safehub._signing.manifest import ManifestError, UnsafeManifestPath, check_relpath
from safehub._signing.statement import parse_statement

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=20)

VALID_BUNDLE: dict[str, Any] = {
    "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
    "verificationMaterial": {"publicKey": {"hint": "ab"}, "tlogEntries": []},
    "dsseEnvelope": {"payload": "e30=", "payloadType": "application/vnd.in-toto+json",
                     "signatures": [{"sig": "AAAA", "keyid": ""}]},
}


@given(st.binary(max_size=300))
def test_bundle_parser_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(BundleError):
        parse_bundle(data)


@given(st.sampled_from([("mediaType",), ("verificationMaterial",),
                        ("verificationMaterial", "publicKey"), ("dsseEnvelope",),
                        ("dsseEnvelope", "payload"), ("dsseEnvelope", "signatures"),
                        ("dsseEnvelope", "payloadType")]), json_values)
def test_bundle_parser_on_mutated_fields(path: tuple[str, ...], value: Any) -> None:
    doc = json.loads(json.dumps(VALID_BUNDLE))
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with contextlib.suppress(BundleError):
        parse_bundle(json.dumps(doc).encode())


@given(json_values)
@settings(max_examples=200)
def test_statement_parser_on_random_json(value: Any) -> None:
    with contextlib.suppress(ManifestError):
        parse_statement(json.dumps(value).encode())


@given(st.dictionaries(st.sampled_from(["method", "hash_type", "shard_size", "allow_symlinks",
                                        "ignore_paths"]), json_values),
       st.lists(st.dictionaries(st.sampled_from(["name", "algorithm", "digest"]), json_values),
                max_size=3))
def test_statement_parser_on_random_predicates(ser: dict[str, Any],
                                               resources: list[dict[str, Any]]) -> None:
    stmt = {"_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "m", "digest": {"sha256": "00"}}],
            "predicateType": "https://model_signing/signature/v1.0",
            "predicate": {"serialization": ser, "resources": resources}}
    with contextlib.suppress(ManifestError):
        parse_statement(json.dumps(stmt).encode())


@given(st.text(alphabet=st.sampled_from(list("ab./\\\x00:")), max_size=12))
def test_accepted_paths_stay_inside_the_model(name: str) -> None:
    try:
        accepted = check_relpath(name)
    except UnsafeManifestPath:
        return
    root = "/model"
    resolved = os.path.normpath(os.path.join(root, accepted))
    assert resolved.startswith(root + "/") and resolved != root
    assert resolved == os.path.join(root, accepted), "no component is normalized away"
