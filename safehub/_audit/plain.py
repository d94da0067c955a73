"""Any folder or file: every regular file is a target; links are never followed."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from safehub._audit.fixrecord import RECORD_SUFFIX, record_expectation, record_path
from safehub._audit.model import Discovery, Expectation, FileTarget, Provenance
from safehub._audit.walk import walk_files
from safehub.findings import Skipped

__all__ = ["plain_file_targets"]


def plain_file_targets(root: str, provenance: Provenance, *,
                       repo: str | None = None, repo_root: str | None = None,
                       prune: Callable[[str, str], bool] | None = None) -> Discovery:
    """A target per regular file under ``root`` (or ``root`` itself when it is a file).

    A file named explicitly is always reported; inside folders, content that is not a
    model format is skipped unless its name says it is a model file (as ``scan`` does).
    ``repo_root``: paths below it are recorded as the path in the repository.
    ``prune(rel, name)``: folders it returns True for are not entered (another layout
    audits them).
    """
    found = Discovery()
    if not os.path.isdir(root) or os.path.islink(root):
        real = os.path.realpath(root) if os.path.islink(root) else root
        found.files.append(FileTarget(path=root, real=real, provenance=provenance, repo=repo,
                                      model_only=False, name=os.path.basename(root),
                                      expectations=_fixed(root)))
        return found
    for entry in walk_files(root, prune):
        if entry.kind == "link":
            found.skipped.append(Skipped(entry.path, "symbolic link (not followed)"))
            continue
        if entry.kind == "special":
            found.skipped.append(Skipped(entry.path, "not a regular file"))
            continue
        prov = provenance
        if repo_root is not None:
            prov = dataclasses.replace(
                provenance, path_in_repo=os.path.relpath(entry.path, repo_root).replace(
                    os.sep, "/"))
        found.files.append(FileTarget(path=entry.path, real=entry.path, provenance=prov,
                                      repo=repo, model_only=True,
                                      name=os.path.basename(entry.path),
                                      expectations=_fixed(entry.path)))
        if found.files[-1].expectations:
            found.files[-1] = dataclasses.replace(found.files[-1], provenance=dataclasses.replace(
                prov, record=str(record_path(entry.path))))
    return found


def _fixed(path: str) -> tuple[Expectation, ...]:
    """The digest ``--fix`` recorded for a file it wrote, if it wrote this one."""
    if path.endswith(RECORD_SUFFIX):
        return ()
    expected = record_expectation(path)
    return (expected,) if expected is not None else ()
