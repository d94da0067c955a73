"""``safehub lock``: write, update or check ``safehub.lock``.

``safehub lock OWNER/REPO[:REF]... --url URL...`` resolves each ref afresh
through the API (ignoring what the lockfile said), downloads and hashes the
archive and the files (files are also scanned and decided by the policy), and
writes their commits and digests into the lockfile, keeping every other entry.
With no repo and no URL, every entry already in the lockfile is re-resolved
(an update of everything).

``--frozen`` changes nothing: each named entry (or every entry) must already be
in the lockfile, is fetched as the lockfile says (no ref resolution) and must
match it; exit 1 when something is missing or differs. That is what
``Fetcher(frozen=True)`` does at run time: it refuses anything not listed.
"""

from __future__ import annotations

import argparse
import logging

from safehub._fetch.lockfile import local_tree
from safehub._format.escape import escape_line as _e
from safehub.cli._common import EXIT_ERROR, EXIT_OK, ProgressLine
from safehub.cli._output import write_stdout
from safehub.cli.policy import add_policy_option
from safehub.fetch import (
    LOCKFILE_NAME,
    Fetcher,
    LockedFile,
    LockedRepo,
    Lockfile,
    Progress,
    ProgressCallback,
    RepoSpec,
)

__all__ = ["register"]

log = logging.getLogger("safehub")

HELP = "pin repos and files to exact commits and SHA-256 digests in safehub.lock"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``safehub lock`` to the CLI."""
    p = sub.add_parser("lock", help=HELP, description=HELP + (
        ". Named repos and URLs are resolved afresh and (re)written; with none, every entry "
        "is. --frozen checks instead of writing. Exit 0 when done, 1 when denied, not locked "
        "(--frozen) or a digest differs, 2 on errors."))
    p.add_argument("repos", nargs="*", metavar="OWNER/REPO[:REF]",
                   help="GitHub repositories to lock (default branch when no ref)")
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="a file to download, scan and lock (repeatable)")
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="a local repository folder to lock by the digest of its files, under "
                   "its real path (repeatable)")
    p.add_argument("--lockfile", default=LOCKFILE_NAME, metavar="PATH",
                   help=f"the lockfile (default: ./{LOCKFILE_NAME})")
    p.add_argument("--frozen", action="store_true",
                   help="write nothing: verify that everything named (or listed) is locked "
                   "and matches")
    p.add_argument("--trust-repo", action="store_true",
                   help="trust the named repos for this run (as hub.load(trust_repo=True)), "
                   "where the policy honours it")
    add_policy_option(p)
    p.set_defaults(run=run)


def _progress() -> tuple[ProgressLine, ProgressCallback]:
    line = ProgressLine("downloading")

    def report(p: Progress) -> None:
        line.bytes_done(p.done, p.total)
    return line, report


def run(args: argparse.Namespace) -> int:
    """Run ``safehub lock``; returns the exit code."""
    lockfile = Lockfile.load(args.lockfile, missing_ok=not args.frozen)
    specs = [RepoSpec.parse(s) for s in args.repos]
    urls = list(dict.fromkeys(args.url))
    paths = list(dict.fromkeys(args.path))
    if not specs and not urls and not paths:
        specs = [RepoSpec.parse(f"{e.repo}:{e.ref}" if e.ref else e.repo)
                 for e in lockfile.repos.values()]
        urls = list(lockfile.files)
        paths = list(lockfile.paths)
        if not specs and not urls and not paths:
            log.error("nothing to lock: name repos or --url URLs (the lockfile %s is empty)",
                      lockfile.path)
            return EXIT_ERROR
    line, progress = _progress()
    trust = True if args.trust_repo else None
    # Fresh resolution ignores the lockfile; --frozen goes through it and may not add to it.
    fetcher = Fetcher(args.policy, lockfile=lockfile if args.frozen else None,
                      frozen=args.frozen, progress=progress)
    try:
        for spec in specs:
            checkout = fetcher.fetch_repo(spec, trust_repo=trust)
            if not args.frozen:
                lockfile.add_repo(LockedRepo(
                    repo=checkout.repo, api=fetcher.api_base, ref=spec.ref or "",
                    commit=checkout.commit, archive_sha256=checkout.archive_sha256,
                    tree_sha256=checkout.tree_sha256))
            verb = "verified" if args.frozen else "locked"
            write_stdout(f"{verb} {_e(str(spec))} -> {checkout.commit} "
                         f"(tree {checkout.tree_sha256[:16]})\n")
        for url in urls:
            previous = lockfile.file(url)
            info = fetcher.fetch_url(url, repo=previous.repo if previous else None)
            if not args.frozen:
                lockfile.add_file(url, LockedFile(sha256=info.sha256, size=info.size,
                                                  repo=previous.repo if previous else None))
            verb = "verified" if args.frozen else "locked"
            write_stdout(f"{verb} {_e(url)} -> sha256 {info.sha256}\n")
        for path in paths:
            if args.frozen:
                tree = fetcher.check_local(path)
                write_stdout(f"verified {_e(path)} -> tree {(tree or '')[:16]}\n")
            else:
                entry = local_tree(path)
                key = lockfile.add_local(path, entry)
                write_stdout(f"locked {_e(key)} -> tree {entry.tree_sha256[:16]}\n")
    finally:
        line.done()
    if not args.frozen:
        if lockfile.changed:
            lockfile.save()
            log.info("wrote %s", lockfile.path)
        else:
            log.info("%s is up to date", lockfile.path)
    return EXIT_OK
