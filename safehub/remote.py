"""Scan model files where they are stored, reading only the bytes the scanner needs.

>>> from safehub.remote import scan_remote
>>> result = scan_remote(["hf://acme/detector", "s3://models/prod/", "https://host/m.pt"])
>>> result.report.unsafe, result.costs["https://host/m.pt"].requests

``https://`` (one file), ``hf://owner/name[@rev][/path]`` (a Hugging Face model repo at
the commit ``rev`` resolves to, every file or one path; ``$HF_ENDPOINT`` as
``huggingface_hub``), ``s3://bucket/prefix`` (one object or every object under the
prefix; the ``s3`` extra). Every URL requested, every redirect hop included, is decided
by the policy's ``downloads`` rules. For each file the report is the scanner's verdict on
the bytes the server sent; ``costs`` says how many requests and body bytes it took.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from safehub._remote.http import Stats
from safehub._remote.scan import RemoteScan
from safehub._remote.scan import scan_remote as _scan_remote
from safehub._remote.target import is_remote
from safehub._scanner.context import ScanOptions
from safehub.policy import Policy, load_policy

__all__ = ["RemoteScan", "Stats", "is_remote", "scan_remote"]


def scan_remote(urls: Sequence[str], *, policy: Policy | str | os.PathLike[str] | None = None,
                options: ScanOptions | None = None, workers: int = 8,
                progress: Callable[[str], None] | None = None) -> RemoteScan:
    """Scan every file the URLs name. ``options`` default to the policy's scanner options.

    Locations that cannot be listed or read, and URLs the policy denies, are unreadable
    entries in the report (never skipped, never clean).
    """
    chosen = policy if isinstance(policy, Policy) else load_policy(policy)
    return _scan_remote(list(urls), policy=chosen,
                        options=options or chosen.scan_options(), workers=workers,
                        progress=progress)
