"""torch.hub's API, backed by safehub's policy, fetch and scan stages.

``import safehub as hub`` and call these as you would ``torch.hub``'s: same
names, same parameter names, order and defaults, plus a keyword-only
``policy=`` (a :class:`~safehub.policy.Policy`, preset name or path; None: the
default selection). Where torch.hub is unsafe by design the call shape stays and
the behaviour changes; each function's docstring lists the differences.

Cache: the same hub directory rules as torch.hub (:func:`get_dir`); safehub's
own cache is its ``safehub/`` subfolder, keyed by URL (files) and commit (repos).
"""

from __future__ import annotations

from safehub._hub.api import (
    download_url_to_file,
    get_dir,
    help,
    list,
    load,
    load_state_dict_from_url,
    set_dir,
)

__all__ = [
    "download_url_to_file",
    "get_dir",
    "help",
    "list",
    "load",
    "load_state_dict_from_url",
    "set_dir",
]
