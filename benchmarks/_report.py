"""Markdown tables from the measurements: detections, false alarms, errors and times side by
side, every time also shown as a ratio to safehub's CLI."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from _data import Checkpoint, Sample
from _measure import Timing
from _tools import Tool, Verdict

__all__ = ["CorpusResult", "SizeResult", "corpus_tables", "fmt_s", "size_tables"]


@dataclass
class CorpusResult:
    """One tool over the labelled corpus."""

    tool: Tool
    verdicts: dict[str, tuple[Verdict, str]] = field(default_factory=dict)  # rel -> verdict
    timing: Timing | None = None


@dataclass
class SizeResult:
    """One tool on one generated checkpoint."""

    timing: Timing
    verdict: Verdict
    reason: str = ""


def fmt_s(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.2f} s"


def _ratio(t: float, base: float | None) -> str:
    if not base:
        return "–"
    r = t / base
    return f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _timing_cell(timing: Timing | None, base: float | None) -> tuple[str, str]:
    if timing is None or not timing.runs:
        return "–", "–"
    if timing.timed_out:
        return f"> {fmt_s(timing.last.wall_s)} (killed)", "–"
    n = len(timing.runs)
    text = fmt_s(timing.median_s) + ("" if n > 1 else " (1 run)")
    return text, _ratio(timing.median_s, base)


def corpus_tables(samples: Sequence[Sample], results: Sequence[CorpusResult],
                  api: Timing | None) -> str:
    """The corpus summary table plus, per tool, which files it got wrong and why."""
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    n_mal = len(by_label.get("malicious", []))
    n_ben = len(by_label.get("benign", []))
    n_pol = len(by_label.get("benign-needs-policy", []))
    base = next((r.timing.median_s for r in results
                 if r.tool.name == "safehub" and r.timing and not r.timing.timed_out), None)

    header = ["tool", f"attacks flagged (of {n_mal})", "attacks passed as clean",
              f"false alarms (of {n_ben} benign)",
              f"needs-policy blocked (of {n_pol})", f"errors (of {len(samples)})",
              "whole corpus, wall", "÷ safehub CLI"]
    rows = []
    details = []
    for r in results:
        def count(label: str, verdict: Verdict, r: CorpusResult = r) -> list[str]:
            return [s.rel for s in by_label.get(label, [])
                    if r.verdicts.get(s.rel, (Verdict.ERROR, ""))[0] is verdict]

        flagged = count("malicious", Verdict.FLAGGED)
        missed = count("malicious", Verdict.CLEAN)
        false_alarms = count("benign", Verdict.FLAGGED)
        blocked = [s.rel for s in by_label.get("benign-needs-policy", [])
                   if r.verdicts.get(s.rel, (Verdict.ERROR, ""))[0] is not Verdict.CLEAN]
        errors = [(rel, why) for rel, (v, why) in sorted(r.verdicts.items())
                  if v is Verdict.ERROR]
        err_mal = sum(1 for rel, _ in errors if rel in {s.rel for s in by_label["malicious"]})
        time_text, ratio = _timing_cell(r.timing, base)
        rows.append([f"**{r.tool.name}**" if r.tool.name == "safehub" else r.tool.name,
                     str(len(flagged)), str(len(missed)), str(len(false_alarms)),
                     str(len(blocked)),
                     f"{len(errors)}" + (f" ({err_mal} on attacks)" if errors else ""),
                     time_text, ratio])
        lines = []
        if missed:
            lines.append("- attacks passed as clean: " + ", ".join(_short(x) for x in missed))
        if false_alarms:
            lines.append("- false alarms: " + ", ".join(_short(x) for x in false_alarms))
        passed = count("benign-needs-policy", Verdict.CLEAN)
        if passed:
            lines.append("- needs-policy files passed without a policy: "
                         + ", ".join(_short(x) for x in passed))
        by_reason: dict[str, list[str]] = {}
        for rel, why in errors:
            # The same failure on many files is one line; paths are left out of the reason.
            why = re.sub(r"\S*" + re.escape(_short(rel)) + r"\S*", "FILE", why)
            by_reason.setdefault(why, []).append(_short(rel))
        for why, files in by_reason.items():
            lines.append(f"- error ({why}): " + ", ".join(files))
        if lines:
            details.append(f"**{r.tool.name}**\n" + "\n".join(lines))
    if api is not None and api.runs:
        time_text, ratio = _timing_cell(api, base)
        rows.append(["safehub API, in-process (`safehub.scan.scan`)", "same", "", "", "", "",
                     time_text, ratio])
    out = [_table(header, rows)]
    notes = [f"- {r.tool.name}: {r.tool.note}" for r in results if r.tool.note]
    if notes:
        out.append("\n".join(notes))
    if details:
        out.append("<details><summary>Which files each tool got wrong</summary>\n\n"
                   + "\n\n".join(details) + "\n\n</details>")
    return "\n\n".join(out)


def _short(rel: str) -> str:
    return rel.rsplit("/", 1)[-1]


def size_tables(checkpoints: Sequence[Checkpoint], tools: Sequence[Tool],
                results: dict[tuple[str, str], SizeResult],
                api: dict[str, Timing]) -> str:
    """Per-file time (and peak memory) for each generated checkpoint and tool."""
    header = ["file", "MiB"] + [t.name for t in tools] + ["safehub API"]
    rows = []
    mem_rows = []
    for ck in checkpoints:
        key = ck.path.name
        base_res = results.get((key, "safehub"))
        base = base_res.timing.median_s if base_res and not base_res.timing.timed_out else None
        row = [f"{ck.fmt} {ck.size_name}", f"{ck.size_mib:.0f}" if ck.size_mib >= 2
               else f"{ck.size_mib:.1f}"]
        mem = list(row)
        for t in tools:
            res = results.get((key, t.name))
            if res is None:
                row.append("–")
                mem.append("–")
                continue
            text, ratio = _timing_cell(res.timing, base)
            cell = text if t.name == "safehub" else f"{text} ({ratio})"
            if res.verdict is Verdict.ERROR:
                cell += " error"
            elif res.verdict is Verdict.FLAGGED:
                cell += " flagged"
            row.append(cell)
            mem.append(f"{res.timing.max_rss_mib:.0f}")
        if key in api:
            text, ratio = _timing_cell(api[key], base)
            row.append(f"{text} ({ratio})")
        else:
            row.append("–")
        rows.append(row)
        mem_rows.append(mem)
    mem_header = ["file", "MiB"] + [t.name for t in tools]
    return "\n\n".join([
        _table(header, rows),
        "Cells: median wall time of the CLI run (ratio to safehub's CLI on the same file); "
        "`error` = the tool could not scan the file, `flagged` = a false alarm (every generated "
        "file is benign).",
        "Peak memory (max RSS of the CLI process, MiB; on Linux a child's figure starts from "
        "the forking harness's own RSS, so the smallest values here are that floor):",
        _table(mem_header, mem_rows),
    ])
