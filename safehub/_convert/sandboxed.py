"""Loading a pickle-based checkpoint in the sandbox, keeping its tensors and plain data.

The sandbox runs repository entrypoints; a conversion is one, written by safehub: a
private folder whose ``hubconf.py`` is :mod:`safehub._convert.entry`. The checkpoint is
not copied into the sandbox: the entrypoint asks for it as a download, and the broker
here serves exactly that one file (any other URL or repo is refused), as a read-only
descriptor. The child loads it with ``torch.load(weights_only=True)`` and the globals
the policy allows (or unpickles it in full when the caller asks, still contained), and
returns tensors only; the plain-data skeleton comes back as the bytes of one tensor,
and is parsed here as untrusted JSON (size-capped).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safehub._convert import entry
from safehub._policy.policy import Policy
from safehub._snapshot import Snapshot
from safehub.errors import PolicyViolation, SandboxError

__all__ = ["Loaded", "load_in_sandbox", "sandbox_settings"]

log = logging.getLogger("safehub.convert")

_MAX_META = 64 << 20


@dataclass(frozen=True)
class Loaded:
    """What came out of the sandbox: tensors, the plain-data skeleton, what was dropped,
    and the groups of keys whose tensors shared storage in the checkpoint."""

    tensors: dict[str, Any]
    structure: Any
    dropped: list[str]
    aliased: tuple[tuple[str, ...], ...]


class _OneFile:
    """A broker that serves one snapshot under one URL and refuses everything else.

    The sandbox receives a read-only descriptor on the snapshot that was hashed and
    scanned, never a path that could be swapped in between."""

    def __init__(self, url: str, snapshot: Snapshot):
        self.url = url
        self.snapshot = snapshot

    def fetch(self, url: str, *, file_name: str | None, check_hash: bool) -> Path | int:
        if url != self.url:
            raise PolicyViolation("a conversion downloads nothing", subject=url[:300],
                                  fix="convert a checkpoint that does not refer to others")
        if self.snapshot.fd is None:
            raise SandboxError("no descriptor to hand to the sandbox (memfd_create is not "
                               "available)", subject=self.snapshot.name,
                               fix="convert on Linux 3.17 or later")
        return self.snapshot.reader_fd()

    def fetch_repo(self, repo: str, *, force_reload: bool) -> Path:
        raise PolicyViolation("a conversion loads no repository", subject=repo[:300],
                              fix="convert a checkpoint that does not refer to others")


def sandbox_settings(policy: Policy) -> dict[str, Any]:
    """The policy's ``[sandbox]`` section as SandboxRequest options."""
    from safehub._sandbox.spec import Layer, SandboxLimits

    section = policy.model.sandbox
    limits = SandboxLimits(timeout_s=float(section.timeout_s), memory_mb=section.memory_mb,
                           cpu_s=section.cpu_s, max_processes=section.max_processes,
                           max_file_mb=section.max_file_mb,
                           max_open_files=section.max_open_files)
    known = {layer.value for layer in Layer}
    required = frozenset(Layer(name) for name in section.required_layers if name in known)
    return {"limits": limits, "required_layers": required}


def load_in_sandbox(snapshot: Snapshot, name: str, *, policy: Policy,
                    allowed_globals: list[str], full_unpickle: bool,
                    sandbox: Any | None = None) -> Loaded:
    """Load the snapshot in the sandbox (the process-wide one unless ``sandbox`` is
    given); ``name`` is the file's name, for messages."""
    from safehub._sandbox.spec import SandboxRequest
    from safehub._sandbox.supervisor import default_sandbox

    url = f"safehub-convert://{secrets.token_hex(16)}/{name}"
    repo = Path(tempfile.mkdtemp(prefix="safehub-convert-"))
    try:
        # The sandbox's unprivileged user must be able to read the entrypoint.
        os.chmod(repo, 0o755)
        hubconf = repo / "hubconf.py"
        shutil.copyfile(entry.__file__, hubconf)
        os.chmod(hubconf, 0o644)
        request = SandboxRequest.for_load(
            repo, "convert_checkpoint",
            kwargs={"url": url, "allowed": list(allowed_globals),
                    "full_unpickle": bool(full_unpickle)},
            **sandbox_settings(policy))
        runner = sandbox if sandbox is not None else default_sandbox()
        result = runner.run(request, _OneFile(url, snapshot))
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    for layer, reason in result.layers_missing.items():
        log.warning("sandbox layer %s was not applied: %s", layer.value, reason)
    tensors = dict(result.tensors)
    raw = tensors.pop(entry.META_KEY, None)
    if raw is None or raw.dim() != 1 or raw.numel() > _MAX_META:
        raise SandboxError("the conversion returned no readable metadata",
                           subject=name, fix="report this as a safehub bug")
    try:
        meta = json.loads(raw.numpy().tobytes().decode("utf-8"))
        structure = meta["structure"]
        dropped = [str(x) for x in meta["dropped"]][:10_000]
    except (ValueError, KeyError, TypeError) as exc:
        raise SandboxError(f"the conversion returned malformed metadata: {exc}",
                           subject=name, fix="do not use this checkpoint") from exc
    return Loaded(tensors, structure, dropped, tuple(tuple(g) for g in result.aliased))
