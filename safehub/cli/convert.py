"""``safehub convert IN [OUT]``: a pickle checkpoint to safetensors or npz, via the sandbox."""

from __future__ import annotations

import argparse
import json
import logging

from safehub._format.escape import escape_line, json_clean
from safehub.cli._common import EXIT_OK
from safehub.cli._output import write_stdout

__all__ = ["register", "run"]

log = logging.getLogger("safehub")

HELP = "convert a pickle checkpoint to safetensors or npz (loaded in the sandbox)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("convert", help=HELP, description=HELP + (
        ". Tensor names are kept; plain data (numbers, strings, lists, dicts) goes to "
        "OUT.metadata.json. Exit 0 when written, 1 when the file is refused as unsafe, 2 on "
        "error."))
    p.add_argument("source", metavar="IN", help="checkpoint written by torch.save (or a "
                   "safetensors file, to write npz)")
    p.add_argument("output", metavar="OUT", nargs="?",
                   help="output file (default: IN with the format's suffix)")
    p.add_argument("--format", choices=["safetensors", "npz"], default="safetensors",
                   help="safetensors (default; every dtype) or npz (numpy and MLX read it; "
                        "no bfloat16 unless --upcast-bfloat16, no float8)")
    p.add_argument("--upcast-bfloat16", action="store_true",
                   help="npz: store bfloat16 tensors as float32 (exact, twice the size)")
    p.add_argument("--policy", metavar="NAME|PATH",
                   help="policy for allowed globals and the sandbox's limits")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--unsafe-full-unpickle", action="store_true",
                   help="UNSAFE: unpickle in full inside the sandbox, running the code the "
                        "file carries there (to rescue the tensors of a file the scan refuses)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from safehub._progress import Status, label
    from safehub.cli._common import progress_enabled
    from safehub.convert import convert

    status = Status(f"scanning {label(args.source)} and loading it in the sandbox",
                    enabled=progress_enabled())
    try:
        result = convert(args.source, args.output, format=args.format,
                         upcast_bfloat16=args.upcast_bfloat16, policy=args.policy,
                         overwrite=args.force, unsafe_full_unpickle=args.unsafe_full_unpickle)
    finally:
        status.done()
    if result.upcast:
        log.info("stored %d bfloat16 tensors as float32 (--upcast-bfloat16)", len(result.upcast))
    if args.json:
        body = {"schema_version": "1", "command": "convert", "source": str(result.source),
                "source_sha256": result.source_sha256, "output": str(result.output),
                "output_sha256": result.output_sha256, "format": result.format.value,
                "tensors": result.tensors,
                "metadata": str(result.metadata) if result.metadata else None,
                "upcast_from_bfloat16": list(result.upcast), "dropped": list(result.dropped),
                "aliased": [list(g) for g in result.aliased]}
        write_stdout(json.dumps(json_clean(body), indent=2) + "\n")
    elif not args.quiet:
        extra = f"; plain data in {escape_line(result.metadata)}" if result.metadata else ""
        write_stdout(f"converted {escape_line(result.source)} -> "
                         f"{escape_line(result.output)} ({result.tensors} "
                         f"tensors, sha256 {result.output_sha256}){extra}\n")
    log.info("the original is unchanged; once the new file works for you, retire the pickle")
    return EXIT_OK
