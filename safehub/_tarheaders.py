"""The bound on a tar's pax keys, shared by the repository archives' extraction and the
scanner's legacy-tar reading (both read tars with ``tarfile``).

tarfile copies the global pax keys into every member after them (and walks them), so one
global header of 60,000 tiny keys before 2,000 empty members (a 156 KB download, a 1.7 MB
``.pt``) took 3.7 GiB and half a minute, growing with each member. Real headers hold a few
fields (path, times, owner, GitHub's commit comment).
"""

from __future__ import annotations

import tarfile
from typing import Any

MAX_PAX_KEYS = 64
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


class TooManyPaxKeys(Exception):
    """A pax header brought one member's keys, or the global ones, over MAX_PAX_KEYS."""

    def __init__(self) -> None:
        super().__init__(f"a pax header of more than {MAX_PAX_KEYS} fields")


class PaxBoundedInfo(tarfile.TarInfo):
    """A member header whose pax keys are checked at the first header over the bound,
    before another member copies them (pass as ``tarfile.open(tarinfo=...)``)."""

    def _proc_member(self, archive: Any) -> Any:  # tarfile's hook for each header
        member = super()._proc_member(archive)  # type: ignore[misc]
        if self.type in _PAX_TYPES and max(len(archive.pax_headers),
                                           len(member.pax_headers)) > MAX_PAX_KEYS:
            raise TooManyPaxKeys()
        return member
