"""Options shared by ``safehub load``, ``safehub list`` and ``safehub help``."""

from __future__ import annotations

import argparse
import json
import logging

from safehub.policy import Policy, load_policy

__all__ = ["add_repo_options", "parse_kwargs", "policy_for"]

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
    parser.add_argument("--allow-url", action="append", default=[], metavar="PREFIX",
                        help="also allow downloads under this URL prefix for this run "
                        "(https, or plain http to a loopback address); repeatable")


def policy_for(args: argparse.Namespace) -> Policy:
    policy = load_policy(args.policy)
    return policy.with_download_prefixes(list(args.allow_url))


def parse_kwargs(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    kwargs: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise argparse.ArgumentTypeError(
                f"{item!r} is not key=value (keys are Python identifiers)")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return kwargs
