"""SARIF 2.1.0 report for code-scanning tools (GitHub, GitLab, Azure DevOps).

Paths are relative to the ``SRCROOT`` base (the working directory) when they can
be; binary files get ``startLine: 1`` and the byte offset as a property; each
result carries a stable partial fingerprint so findings do not churn between runs.
Text from the scanned files is escaped to one line (``escape_line``); URIs percent-encode
the path's bytes, so a name that is not UTF-8 keeps its exact bytes. A remote file
(``https://``, ``hf://``, ``s3://``) is located by its own URL (credentials redacted), never
as a path under the working directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from safehub._format.escape import escape_line, json_text, redact_secrets
from safehub._version import __version__
from safehub.findings import Finding, ScanReport
from safehub.rules import RULES, Severity

__all__ = ["render_sarif"]

_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
          Severity.LOW: "warning", Severity.INFO: "note"}
# GitHub's security-severity scale (0-10).
_SECURITY_SEVERITY = {Severity.CRITICAL: "9.8", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
                      Severity.LOW: "3.0", Severity.INFO: "0.0"}


# The remote locations `safehub scan|audit` reads (safehub._remote.target.is_remote).
_REMOTE = re.compile(r"(?i)(https?|hf|s3)://")
# Characters a URI may hold as they are (RFC 3986 reserved and unreserved); '%' only as
# the start of a valid escape.
_URI_SAFE = ":/?#[]@!$&'()*+,;=~%"
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _uri(path: str, root: Path) -> tuple[str, bool]:
    """(uri, relative?) for a scanned path."""
    if _REMOTE.match(path):
        return _BARE_PERCENT.sub("%25", quote(_path_bytes(redact_secrets(path)),
                                              safe=_URI_SAFE)), False
    absolute = Path(os.path.abspath(path))
    try:
        rel = absolute.relative_to(root)
        return quote(_path_bytes(rel.as_posix())), True
    except ValueError:
        return "file://" + quote(_path_bytes(absolute.as_posix())), False


def _path_bytes(path: str) -> bytes:
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return path.encode("utf-8", "surrogatepass")


def render_sarif(report: ScanReport) -> str:
    root = Path(os.getcwd())
    used = sorted({f.rule_id for f in report.findings})
    index = {rule_id: i for i, rule_id in enumerate(used)}
    rules = []
    for rule_id in used:
        rule = RULES[rule_id]
        rules.append({
            "id": rule.id,
            "name": rule.name,
            "shortDescription": {"text": rule.summary.split(". ")[0].rstrip(".") + "."},
            "fullDescription": {"text": rule.summary},
            "help": {"text": rule.help},
            "defaultConfiguration": {"level": _LEVEL[rule.severity]},
            "properties": {"security-severity": _SECURITY_SEVERITY[rule.severity],
                           "tags": ["security"]},
        })
    results = [_result(f, index, root) for f in report.findings]
    run = {
        "tool": {"driver": {"name": "safehub", "version": __version__,
                            "informationUri": "https://github.com/safehub/safehub",
                            "rules": rules}},
        "originalUriBaseIds": {"SRCROOT": {
            "uri": "file://" + quote(_path_bytes(root.as_posix().rstrip("/"))) + "/"}},
        "results": results,
        "invocations": [_invocation(report)],
    }
    if report.policy is not None:
        run["properties"] = {"safehub.policy": report.policy.to_json()}
    doc = {"$schema": _SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2) + "\n"


def _invocation(report: ScanReport) -> dict[str, object]:
    """The run succeeded only when every file was scanned and there was one: a code-scanning
    upload of a run that scanned nothing (exit 2) must not read as a clean run."""
    problems = []
    if not report.files:
        problems.append("nothing was scanned: no model file found in "
                        + (", ".join(escape_line(r) for r in report.roots) or "the input"))
    if report.unscanned:
        problems.append(f"{len(report.unscanned)} of {len(report.files)} files could not be "
                        f"scanned (see the SH19x results)")
    invocation: dict[str, object] = {"executionSuccessful": not problems}
    if problems:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": text}} for text in problems]
    return invocation


def _location(path: str, root: Path, finding: Finding | None) -> dict[str, object]:
    uri, relative = _uri(path, root)
    artifact: dict[str, object] = {"uri": uri}
    if relative:
        artifact["uriBaseId"] = "SRCROOT"
    location: dict[str, object] = {
        "physicalLocation": {"artifactLocation": artifact, "region": {"startLine": 1}}
    }
    if finding is not None:
        props: dict[str, object] = {}
        if finding.location:
            props["record"] = json_text(finding.location)
        if finding.offset is not None:
            props["byteOffset"] = finding.offset
        if props:
            location["properties"] = props
    return location


def _result(finding: Finding, index: dict[str, int], root: Path) -> dict[str, object]:
    text = escape_line(finding.message)
    if finding.location:
        text += f" (in {escape_line(finding.location)})"
    if finding.payload and finding.payload != finding.subject:
        text += f". Would run: {escape_line(finding.payload)}"
    result: dict[str, object] = {
        "ruleId": finding.rule_id,
        "ruleIndex": index[finding.rule_id],
        "level": _LEVEL[finding.severity],
        "message": {"text": text},
        "locations": [_location(finding.path, root, finding)],
        "partialFingerprints": {"safehubFinding/v1": finding.fingerprint()},
        "properties": {"severity": finding.severity.value,
                       "subject": json_text(finding.subject)},
    }
    if finding.allowed_by:
        result["suppressions"] = [{"kind": "external",
                                   "justification": escape_line(finding.allowed_by)}]
    return result
