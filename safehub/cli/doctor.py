"""``safehub doctor``: which sandbox isolation layers this machine supports.

Exit 0 when every layer is available, 1 when some are missing (the report says
which and why), 2 when the sandbox cannot start at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

from safehub._format.escape import escape_line
from safehub.cli._common import EXIT_FINDINGS, EXIT_OK
from safehub.cli._output import write_stdout
from safehub.sandbox import Layer, LayerStatus, probe_layers

__all__ = ["register"]

log = logging.getLogger("safehub")
SCHEMA_VERSION = "1"
HELP = "report which sandbox isolation layers this machine supports"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help=HELP, description=HELP + (
        ". A policy's [sandbox] required_layers names layers from this list; a call refuses "
        "to run when one of them is missing. Exit 0 when all are available, 1 otherwise."))
    p.add_argument("-f", "--format", choices=["text", "json"], default="text",
                   help="report format (default: text)")
    p.set_defaults(run=run)


def _text(status: dict[Layer, LayerStatus], color: bool) -> str:
    ok, bad, reset = ("\033[32m", "\033[31m", "\033[0m") if color else ("", "", "")
    width = max(len(layer.value) for layer in status)
    lines = [f"sandbox layers on {platform.system()} {platform.release()}, "
             f"{'as root' if os.geteuid() == 0 else f'as uid {os.geteuid()}'}:"]
    for layer, st in status.items():
        mark = f"{ok}ok     {reset}" if st.available else f"{bad}MISSING{reset}"
        lines.append(f"  {mark} {layer.value:<{width}}  {escape_line(st.detail)}")
        if not st.available:
            lines.append(f"          {'':<{width}}  (protects: {layer.summary})")
    return "\n".join(lines) + "\n"


def _json(status: dict[Layer, LayerStatus]) -> str:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kernel": f"{platform.system()} {platform.release()}",
        "euid": os.geteuid(),
        "all_available": all(st.available for st in status.values()),
        "layers": [{"name": layer.value, "available": st.available, "detail": st.detail,
                    "protects": layer.summary} for layer, st in status.items()],
    }
    return json.dumps(doc, indent=2) + "\n"


def run(args: argparse.Namespace) -> int:
    status = probe_layers()
    if args.format == "json":
        write_stdout(_json(status))
    elif not args.quiet:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        write_stdout(_text(status, color))
    missing = [layer.value for layer, st in status.items() if not st.available]
    if missing:
        log.info("%d of %d layers missing: %s", len(missing), len(status), ", ".join(missing))
        return EXIT_FINDINGS
    log.info("all %d sandbox layers are available", len(status))
    return EXIT_OK
