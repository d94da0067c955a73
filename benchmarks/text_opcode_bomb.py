"""What text-argument opcode floods cost the scanner (the budget is 10 s per input).

    .venv/bin/python benchmarks/text_opcode_bomb.py

Each input is millions of protocol-0 text opcodes (the attacker's generator of issue 10:
4.9M ``S''\\n`` took 44 s before text opcodes were charged ``1 + TEXT_OP_COST`` of the
opcode budget and STRING parsing skipped the warning machinery). Prints CPU and wall
seconds of a whole-file scan and the findings; every row should end in SH191.
"""

from __future__ import annotations

import gzip
import io
import time

from safehub.scan import scan_file

N = 4_900_000
CASES: dict[str, bytes] = {
    "STRING S''": b"S''\n" * N + b".",
    "FLOAT F0": b"F0\n" * N + b".",
    "INT I0": b"I0\n" * N + b".",
    "LONG L0": b"L0\n" * N + b".",
    "STRING escapes S'\\x41' POP": b"S'\\x41'\n0" * 3_000_000 + b"N.",
    "STRING invalid escape S'\\q' POP": b"S'\\q'\n0" * 3_000_000 + b"N.",
    "STRING octal>0o377 S'\\444' POP": b"S'\\444'\n0" * 3_000_000 + b"N.",
    "FLOAT with NUL (divergent) POP": b"F0.0\0\n0" * 3_000_000 + b"N.",
    "GET g0 POP": b"Np0\n" + b"g0\n0" * 4_000_000 + b".",
    "binary NONE POP (reference)": b"N0" * 2_600_000 + b"N.",
}


def main() -> None:
    rows = []
    for name, data in CASES.items():
        rows.append((name, data))
    rows.append(("STRING S'' gzip (joblib)", gzip.compress(CASES["STRING S''"], 6)))
    print(f"{'input':36} {'MB':>6} {'cpu s':>6} {'wall s':>6}  findings")
    for name, data in rows:
        cpu, wall = time.process_time(), time.perf_counter()
        report = scan_file(io.BytesIO(data), name)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        found = ",".join(sorted({f.rule_id for f in report.findings}))
        print(f"{name:36} {len(data) / 1e6:6.1f} {cpu:6.2f} {wall:6.2f}  {found}", flush=True)


if __name__ == "__main__":
    main()
