"""Modes of the folders and files the parent prepares for the sandbox to read: the
repository's bytecode, a private copy of a local repository, the call's grants and
working folder.

A root caller's sandbox drops to an unprivileged uid of its own (chosen per child, not
known when these are made), which reads through the "other" permission bits, so they must
be readable by everyone. Any other caller's sandbox keeps the caller's uid (a user
namespace renames it; the kernel checks the real one), so owner-only modes suffice, and
the machine's other users never read a private repository's bytecode or copies.
"""

from __future__ import annotations

import os


def _others_read() -> bool:
    return os.geteuid() == 0


def folder_mode() -> int:
    """A folder the parent writes into and the sandbox passes through or lists."""
    return 0o755 if _others_read() else 0o700


def read_only_folder_mode() -> int:
    return 0o555 if _others_read() else 0o500


def read_only_file_mode() -> int:
    return 0o444 if _others_read() else 0o400
