"""``safehub load``: run a hub entrypoint in the sandbox and save its tensors as safetensors."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path

from safehub.cli._common import EXIT_ERROR, EXIT_OK, positive_seconds
from safehub.cli._hubargs import add_repo_options, entrypoint_name, parse_kwargs, run_call

__all__ = ["register"]

log = logging.getLogger("safehub")

HELP = "run a torch.hub entrypoint in the sandbox and save the tensors it returns"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("load", help=HELP, description=HELP + (
        ". Exit 0 on success, 1 when the policy or the sandbox refused (a limit, a forbidden "
        "operation, a failing or malformed entrypoint), 2 on error."))
    add_repo_options(p)
    p.add_argument("entry", metavar="ENTRY", type=entrypoint_name,
                   help="the entrypoint in hubconf.py")
    p.add_argument("kwargs", nargs="*", metavar="KEY=VALUE",
                   help="entrypoint keyword arguments; values are JSON if they parse, else text")
    p.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="where to write the tensors")
    p.add_argument("--timeout", type=positive_seconds, metavar="S",
                   help="wall-clock limit in seconds (can only tighten the policy's)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed torch, random and numpy in the sandbox before the repo is imported "
                   "(as torch.manual_seed(N) before torch.hub.load)")
    p.add_argument("--max-memory", type=int, metavar="MB",
                   help="memory limit in MiB (can only tighten the policy's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from safehub._hub.runner import HubCall
    from safehub.sandbox import Operation

    try:
        kwargs = parse_kwargs(args.kwargs)
    except argparse.ArgumentTypeError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    for name, value in (("--timeout", args.timeout), ("--max-memory", args.max_memory)):
        if value is not None and value <= 0:
            log.error("%s must be positive", name)
            return EXIT_ERROR
    if args.seed is not None and not 0 <= args.seed < 2**63:
        log.error("--seed must be from 0 to 2**63-1")
        return EXIT_ERROR
    call = HubCall(args.repo, Operation.LOAD, args.entry, kwargs=kwargs,  # type: ignore[arg-type]
                   source=args.source, trust_repo=True if args.trust_repo else None,
                   force_reload=args.force_reload, timeout_s=args.timeout,
                   memory_mb=args.max_memory, seed=args.seed,
                   trust_nested=tuple(args.trust_nested), as_file=True,
                   lockfile=args.lockfile, frozen=args.frozen)
    result = run_call(call, args)
    # The sandbox's checked safetensors bytes are written as they are: no torch in this
    # process (the header is rebuilt from the checked entries, the data copied). TorchScript
    # archives were already taken out of the file, scanned and allowed (by offset, no torch).
    with result.file as file:
        file.write(args.out)
    log.info("%s: %d tensors written to %s", args.entry, len(file), args.out)
    _write_archives(result.torchscript, args.out)
    if result.shape is not None and (result.shape.kind != "module" or result.shape.script):
        for line in result.shape.describe():
            log.info("  %s", line)
    for layer, reason in result.layers_missing.items():
        log.info("note: layer %s was not applied (%s)", layer.value, reason)
    return EXIT_OK


def _write_archives(archives: Mapping[str, bytes], out: str) -> None:
    """TorchScript archives (only where the policy accepts TorchScript, each scanned and
    allowed) beside ``out`` as ``<stem>.torchscript-<n>.pt``: numbered, since their element
    names came from the sandbox."""
    stem = Path(out).with_suffix("")
    for index, (prefix, data) in enumerate(sorted(archives.items())):
        path = stem.with_name(f"{stem.name}.torchscript-{index}.pt")
        path.write_bytes(data)
        log.info("TorchScript archive of %s (scanned and allowed by the policy; loading it runs "
                 "its code) written to %s", repr(prefix)[:200] if prefix else "the result", path)
