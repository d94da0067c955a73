"""Options shared by ``safehub load``, ``safehub list`` and ``safehub help``."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING

from safehub._format.escape import escape_line

__all__ = ["add_repo_options", "entrypoint_name", "parse_kwargs", "policy_for", "run_call"]

if TYPE_CHECKING:
    from safehub._hub.runner import HubCall
    from safehub.policy import Policy
    from safehub.sandbox import SandboxResult

log = logging.getLogger("safehub")


def add_repo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", metavar="REPO_OR_DIR",
                        help="owner/repo[:ref] on GitHub, or a folder with hubconf.py")
    parser.add_argument("--source", choices=["github", "local"], default="github",
                        help="where REPO_OR_DIR is (default: github)")
    parser.add_argument("--trust-repo", action="store_true",
                        help="trust this repo for this call, where the policy honours it "
                        "(torch.hub's trust_repo=True)")
    parser.add_argument("--trust-nested", action="append", default=[], metavar="OWNER/REPO",
                        help="trust a repo the entrypoint itself loads with torch.hub.load, for "
                        "this call, where the policy honours trust_repo; repeatable")
    parser.add_argument("--force-reload", action="store_true",
                        help="fetch the repo again even if it is cached")
    parser.add_argument("--policy", metavar="NAME|PATH",
                        help="policy preset or file (default: $SAFEHUB_POLICY, [tool.safehub], "
                        "else 'default')")
    parser.add_argument("--lockfile", metavar="PATH",
                        help="verify against this safehub.lock: locked refs resolve to their "
                        "commits, files and local folders must match their digests")
    parser.add_argument("--frozen", action="store_true",
                        help="with --lockfile: refuse any repo, download or folder it does not "
                        "list")
    parser.add_argument("--allow-url", action="append", default=[], metavar="PREFIX",
                        help="also allow downloads under this URL prefix for this run "
                        "(https, or plain http to a loopback address); repeatable")


def entrypoint_name(value: str) -> str:
    """argparse type for ENTRY: a hubconf entrypoint is a Python identifier."""
    if not value.isidentifier():
        raise argparse.ArgumentTypeError(
            f"'{escape_line(value, 200)}' is not an entrypoint name (a Python identifier)")
    return value


def policy_for(args: argparse.Namespace) -> Policy:
    from safehub.policy import load_policy

    policy = load_policy(args.policy)
    # Said when the command ends (safehub.cli.main): an error before then stays one line.
    args.policy_note = policy.describe()
    return policy.with_download_prefixes(list(args.allow_url))


def run_call(call: HubCall, args: argparse.Namespace) -> SandboxResult:
    """Run a hub call for the CLI: on a terminal, say what is happening while the sandbox
    starts and runs, and draw a bar for each download the code asks for."""
    from safehub._hub.runner import hub_lockfile, run_hub_call
    from safehub._progress import DownloadBars, Status, label
    from safehub.cli._common import progress_enabled
    from safehub.fetch import Fetcher
    from safehub.hub import get_dir

    policy = policy_for(args)
    enabled = progress_enabled()
    bars = DownloadBars() if enabled else None
    fetcher = Fetcher(policy, hub_dir=get_dir(), progress=bars, lockfile=hub_lockfile(call),
                      frozen=call.frozen)
    what = {"list": "listing the entrypoints of", "help": "reading the docstring from",
            "load": f"running {label(call.entrypoint or '')} from"}.get(call.op.value, "running")
    status = Status(f"starting the sandbox and {what} {label(call.repo_or_dir)}",
                    enabled=enabled)
    try:
        return run_hub_call(call, policy, fetcher=fetcher)
    finally:
        status.done()
        if bars is not None:
            bars.close()


def parse_kwargs(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings.

    Only finite, plain JSON crosses into the sandbox: ``NaN``, ``Infinity``, ``1e999``
    (which parses as infinity), integers past Python's digit limit and nesting deeper than
    the sandbox accepts are usage errors here, named by their key, not failures later.
    """
    from safehub._sandbox.spec import check_json

    kwargs: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise argparse.ArgumentTypeError(
                f"'{escape_line(item, 200)}' is not KEY=VALUE (keys are Python identifiers)")
        try:
            value: object = json.loads(raw, parse_constant=_not_finite)
        except json.JSONDecodeError:
            value = raw
        except (ValueError, RecursionError) as exc:
            raise argparse.ArgumentTypeError(
                f"{key}: the value is not usable JSON ({escape_line(exc, 200)})") from None
        try:
            kwargs[key] = check_json(value, key)
        except TypeError as exc:
            raise argparse.ArgumentTypeError(
                f"{escape_line(exc, 300)} (only finite JSON values cross into the sandbox)"
            ) from None
    return kwargs


def _not_finite(name: str) -> object:
    raise ValueError(f"{name} is not a finite number")
