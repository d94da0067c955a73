"""TorchScript modules an entrypoint returns: their archive crosses only when the policy
accepts TorchScript, and only after the scanner has checked the bytes.

A TorchScript module always comes back as its weights (its state dict). Where the policy
accepts TorchScript for the repository (``[scanner] allow_torchscript`` or the repo's
``allow_torchscript``), the child also sends the module's ``torch.jit.save`` archive as
one uint8 tensor (:data:`~safehub._sandbox.shape.ARCHIVE_KEY`). The parent takes those
bytes out of the state dict (or, for ``safehub load --out``, out of the checked result
file by the entry's offsets, without torch), scans them as a file (the archive's
pickles, its code, its format) and has the policy decide the scan, then hands them back
as ``bytes``: safehub never loads them (``torch.jit.load`` runs the archive's code in the
caller's process, the caller's choice). A refused scan refuses the whole load. Where the
policy does not accept TorchScript, no archive is asked for, and the manifest says why for
each such module.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from safehub._policy.decide import FileRequest
from safehub._policy.policy import Policy
from safehub._sandbox.shape import Node
from safehub.errors import SandboxError

if TYPE_CHECKING:
    from safehub._sandbox.result import TensorFile

__all__ = ["accepts_torchscript", "take_archives", "take_file_archives"]


def accepts_torchscript(policy: Policy, repo: str | None) -> bool:
    """Whether the policy accepts TorchScript from ``repo`` (None: a local folder)."""
    return policy.scan_options(repo).allow_torchscript


def take_archives(tensors: dict[str, Any], shape: Node | None, *, policy: Policy,
                  repo: str | None, subject: str
                  ) -> tuple[dict[str, Any], Node | None, dict[str, bytes]]:
    """Split the archives out of a load's tensors, scanned and allowed by the policy.

    Returns the tensors without the archives, the shape with each TorchScript module
    saying what became of its archive, and ``{module prefix: archive bytes}``.
    Raises :class:`~safehub.errors.PolicyViolation` when the policy refuses an
    archive's scan, :class:`~safehub.errors.SandboxError` for a malformed one.
    """
    rest = dict(tensors)
    shape, archives = _take(shape, lambda node: _archive_bytes(rest.pop(node.archive), node,
                                                               subject),
                            policy=policy, repo=repo, subject=subject)
    return rest, shape, archives


def take_file_archives(file: TensorFile, shape: Node | None, *, policy: Policy,
                       repo: str | None, subject: str
                       ) -> tuple[Node | None, dict[str, bytes]]:
    """:func:`take_archives` for a result kept as the checked file (``safehub load --out``,
    no torch in this process): each archive's bytes are read by the offsets of its
    checked entry, and the entry is taken out of ``file``, so it is never written as a
    tensor of the result. Returns the annotated shape and the archives."""

    def archive(node: Node) -> bytes:
        spec, data = file.take(node.archive)
        if spec.dtype != "U8" or len(spec.shape) != 1:
            raise _not_bytes(node, subject)
        return data

    return _take(shape, archive, policy=policy, repo=repo, subject=subject)


def _take(shape: Node | None, archive: Callable[[Node], bytes], *, policy: Policy,
          repo: str | None, subject: str) -> tuple[Node | None, dict[str, bytes]]:
    if shape is None:
        return shape, {}
    accepted = accepts_torchscript(policy, repo)
    archives: dict[str, bytes] = {}
    for node in shape.walk():
        if not node.archive:
            continue
        if not accepted:  # the child sent one unasked: it is not used
            raise SandboxError(f"the sandbox sent a TorchScript archive for "
                               f"{node.prefix or '(top)'} that was not asked for",
                               subject=subject)
        from safehub._scanner.entry import scan_file

        data = archive(node)
        where = node.prefix or "(top)"
        report = scan_file(io.BytesIO(data), f"{subject} {where} (TorchScript archive)",
                           options=policy.scan_options(repo))
        policy.decide(FileRequest(report, repo)).raise_if_denied()
        archives[node.prefix] = data
    why = ("archive returned, scanned and allowed: safehub never loads it" if accepted else
           f"weights only: policy {policy.name!r} does not accept TorchScript (`[scanner] "
           "allow_torchscript` or the repo's `allow_torchscript`), so its archive did not "
           "cross")
    return _annotate(shape, why), archives


def _not_bytes(node: Node, subject: str) -> SandboxError:
    return SandboxError(f"the TorchScript archive of {node.prefix or '(top)'} is not a "
                        "1-D uint8 tensor", subject=subject)


def _archive_bytes(tensor: Any, node: Node, subject: str) -> bytes:
    import torch

    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise _not_bytes(node, subject)
    return bytes(tensor.contiguous().numpy().tobytes())


def _annotate(node: Node, why: str) -> Node:
    """The shape with ``why`` as the reason of every TorchScript module node."""
    children = tuple(_annotate(c, why) for c in node.children)
    if node.kind == "module" and node.script:
        return replace(node, reason=why, children=children)
    return replace(node, children=children) if children != node.children else node
