"""JSON report, validated by pydantic models and versioned by ``schema_version``.

Every string is valid Unicode (JSON escapes controls itself). A file name that is not valid
UTF-8 is shown with its undecodable bytes as ``\\xNN`` in ``path``, and ``path_bytes`` holds
the name's exact bytes, base64-encoded (null when ``path`` is the name as it is).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from safehub._format.escape import json_text as _j
from safehub._format.escape import raw_bytes_b64
from safehub._version import __version__
from safehub.findings import ScanReport, Verdict

__all__ = ["SCHEMA_VERSION", "JsonReport", "render_json"]

SCHEMA_VERSION = "1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JsonFinding(_Model):
    rule_id: str
    rule_name: str
    severity: str
    blocking: bool
    message: str
    location: str
    offset: int | None
    subject: str
    payload: str
    allowed_by: str
    fingerprint: str


class JsonFile(_Model):
    path: str
    path_bytes: str | None
    format: str
    size: int
    verdict: str
    records: list[str]
    error: str
    findings: list[JsonFinding]
    decompiled: dict[str, str]


class JsonSkipped(_Model):
    path: str
    path_bytes: str | None
    reason: str


class JsonSummary(_Model):
    files: int
    clean: int
    unsafe: int
    unknown: int
    errors: int
    skipped: int


class JsonPolicy(_Model):
    name: str
    chain: list[str]
    selected_by: str


class JsonReport(_Model):
    schema_version: str
    tool: dict[str, str]
    command: str
    policy: JsonPolicy | None = None  # the policy applied and how it was selected
    summary: JsonSummary
    files: list[JsonFile]
    skipped: list[JsonSkipped]


def build_json(report: ScanReport, *, command: str = "scan") -> JsonReport:
    counts = {v: 0 for v in Verdict}
    for f in report.files:
        counts[f.verdict] += 1
    return JsonReport(
        schema_version=SCHEMA_VERSION,
        tool={"name": "safehub", "version": __version__},
        command=command,
        policy=(JsonPolicy(name=report.policy.name, chain=list(report.policy.chain),
                           selected_by=report.policy.selected_by)
                if report.policy is not None else None),
        summary=JsonSummary(files=len(report.files), clean=counts[Verdict.CLEAN],
                            unsafe=counts[Verdict.UNSAFE], unknown=counts[Verdict.UNKNOWN],
                            errors=counts[Verdict.ERROR], skipped=len(report.skipped)),
        files=[
            JsonFile(
                path=_j(f.path), path_bytes=raw_bytes_b64(f.path), format=_j(f.format),
                size=f.size, verdict=f.verdict.value, records=[_j(r) for r in f.records],
                error=_j(f.error), decompiled={_j(k): _j(v) for k, v in f.decompiled},
                findings=[
                    JsonFinding(rule_id=x.rule_id, rule_name=x.rule_name,
                                severity=x.severity.value, blocking=x.blocking,
                                message=_j(x.message), location=_j(x.location),
                                offset=x.offset, subject=_j(x.subject),
                                payload=_j(x.payload), allowed_by=_j(x.allowed_by),
                                fingerprint=x.fingerprint())
                    for x in f.findings
                ],
            )
            for f in report.files
        ],
        skipped=[JsonSkipped(path=_j(s.path), path_bytes=raw_bytes_b64(s.path),
                             reason=_j(s.reason)) for s in report.skipped],
    )


def render_json(report: ScanReport, *, command: str = "scan") -> str:
    exclude = {"policy"} if report.policy is None else None
    return build_json(report, command=command).model_dump_json(indent=2,
                                                               exclude=exclude) + "\n"
