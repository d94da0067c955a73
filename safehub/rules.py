"""The catalogue of rule ids. Ids are stable: never renumbered, never reused.

Groups: SH1xx pickle and file formats, SH2xx policy, SH3xx integrity and
signatures, SH4xx cache, SH5xx sandbox. Reports (text, JSON, SARIF) take the
name, summary and help of a finding from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["RULES", "Rule", "Severity", "rule"]


class Severity(str, Enum):
    """How bad a finding is. By default everything from LOW up blocks (see Finding.block_at)."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {s: i for i, s in enumerate(Severity)}


@dataclass(frozen=True)
class Rule:
    """A kind of finding: its id, a short name, its usual severity, and how to act on it."""

    id: str
    name: str
    severity: Severity
    summary: str
    help: str


def _rules(*items: Rule) -> dict[str, Rule]:
    return {r.id: r for r in items}


RULES: dict[str, Rule] = _rules(
    # --- SH1xx: pickle opcodes and file formats -------------------------------------------
    Rule("SH100", "dangerous-global", Severity.CRITICAL,
         "The pickle imports a callable known to execute code, run processes, touch files or "
         "the network, or load further pickles.",
         "Do not load this file. Obtain the weights from a trusted source, preferably as "
         "safetensors."),
    Rule("SH101", "unlisted-global", Severity.MEDIUM,
         "The pickle imports a name outside the allowlist of what rebuilding tensors and plain "
         "containers needs.",
         "If you trust the file's author and the name is a harmless data class, allow exactly "
         "this name in policy `[scanner] allowed_globals`."),
    Rule("SH102", "computed-global", Severity.HIGH,
         "The pickle builds the name of what it imports at load time, so it cannot be checked "
         "before loading.",
         "Do not load this file; no legitimate checkpoint computes its imports."),
    Rule("SH103", "extension-registry", Severity.HIGH,
         "The pickle imports through the copyreg extension registry (EXT1/EXT2/EXT4), whose "
         "target is decided by the loading process, not the file.",
         "Do not load this file; checkpoints never need the extension registry."),
    Rule("SH104", "computed-call", Severity.HIGH,
         "The pickle calls an object that is not an imported name (a call result or container), "
         "a pattern used to chain gadgets.",
         "Do not load this file."),
    Rule("SH105", "global-mutation", Severity.HIGH,
         "The pickle modifies an imported class or function (BUILD, SETITEM or APPEND on it), "
         "which can patch code in the loading process.",
         "Do not load this file."),
    Rule("SH106", "persistent-id", Severity.MEDIUM,
         "The pickle asks the loader's persistent_load hook for an object that is not a tensor "
         "storage reference.",
         "Load only files whose persistent ids are torch storage references."),
    Rule("SH107", "out-of-band-buffer", Severity.MEDIUM,
         "The pickle uses out-of-band buffers (protocol 5), which file loaders do not supply.",
         "Re-save the data without out-of-band buffers."),
    Rule("SH108", "unchecked-state", Severity.HIGH,
         "An allowed class or rebuild function is given a state it takes without checking "
         "(a numpy dtype's fields, subarray or object flags; a sparse tensor's indices that "
         "fail torch's validation or cannot be read from a torch zip checkpoint): the "
         "object it makes reads or writes memory outside its data, or takes raw bytes for "
         "object pointers.",
         "Re-save the data as plain dense arrays (safetensors), or sparse tensors with "
         "torch.save's zip format, or load it only in the sandbox."),
    Rule("SH110", "malformed-pickle", Severity.HIGH,
         "The pickle stream is malformed. A loader executes everything before the error, and "
         "scanners that stop early miss it.",
         "Do not load this file; re-download it from its source."),
    Rule("SH111", "truncated", Severity.MEDIUM,
         "The data ends before the format says it should.",
         "Re-download the file; a truncated file cannot be checked."),
    Rule("SH112", "multiple-pickle-streams", Severity.MEDIUM,
         "More than one pickle stream is stored where a loader expects one; loaders that read "
         "on execute the extra streams.",
         "Do not load this file; re-save it with a single stream."),
    Rule("SH113", "trailing-data", Severity.MEDIUM,
         "Bytes follow the end of the data; they may be read by another loader.",
         "Re-save the file, or remove the trailing bytes after checking what they are."),
    Rule("SH114", "polyglot", Severity.HIGH,
         "The file is readable as more than one format (data before a zip archive, or a zip "
         "archive hidden inside another format). Different loaders would see different content.",
         "Do not load this file."),
    Rule("SH115", "zip-anomaly", Severity.MEDIUM,
         "The zip archive has entries that loaders read differently (duplicate names, local "
         "header names or flags that differ from the central directory, overlapping data).",
         "Re-save the checkpoint with torch.save."),
    Rule("SH116", "unsupported-compression", Severity.MEDIUM,
         "A record is compressed with a method safehub cannot read, so it was not checked.",
         "Re-save the file without compression, or with deflate."),
    Rule("SH120", "torchscript-code", Severity.HIGH,
         "The file is a TorchScript archive or flatbuffer module: it carries code that runs "
         "when it is loaded with torch.jit.load (or torch.load, or the lite interpreter).",
         "Load it only if policy allows TorchScript from this source (`[scanner] "
         "allow_torchscript = true`), and then in the sandbox."),
    Rule("SH121", "python-package", Severity.CRITICAL,
         "The file is a torch.package archive: it carries Python modules that are imported "
         "when it is loaded.",
         "Do not load it outside the sandbox; ask for the weights as safetensors."),
    Rule("SH122", "enforce-global-refused", Severity.CRITICAL,
         "Under safehub.enforce(), a pickle loaded through pickle, numpy, joblib or "
         "torch.distributed.checkpoint imports a global that an active policy does not allow; "
         "it was refused before its module was imported.",
         "Allow the exact name in the policy's [scanner] allowed_globals if it is a harmless "
         "data class; otherwise do not load the file."),
    Rule("SH130", "numpy-object-array", Severity.INFO,
         "A numpy array of Python objects: numpy loads it only with allow_pickle=True, and its "
         "pickle was checked like any other.",
         "Store numeric data with a numeric dtype to avoid pickles."),
    Rule("SH131", "malformed-numpy", Severity.MEDIUM,
         "A .npy header is malformed or disagrees with the data that follows.",
         "Re-save the array with numpy.save."),
    Rule("SH140", "undeterminable-extent", Severity.HIGH,
         "A raw data region inside the pickle file (a joblib array, a legacy torch storage) has "
         "a size that cannot be determined, so the bytes after it cannot be checked.",
         "Do not load this file."),
    Rule("SH150", "malformed-safetensors", Severity.MEDIUM,
         "The safetensors header is invalid (length, JSON, dtypes, shapes or offsets).",
         "Re-save the file with the safetensors library."),
    Rule("SH160", "pickle-frame-split", Severity.HIGH,
         "A pickle FRAME ends in the middle of an opcode (or before STOP). Picklers never write "
         "this; unpicklers then read different bytes (reading from a file drops the rest of the "
         "frame, reading from memory does not), so each loader sees another program.",
         "Do not load this file; re-save it with pickle or torch.save."),
    Rule("SH161", "tar-sparse-member", Severity.HIGH,
         "A legacy torch tar checkpoint stores a member torch reads as a sparse file. torch "
         "extracts such members to disk (every data segment written in order, or a failure "
         "that makes it re-read the file as raw pickles), which differs from reading them; "
         "torch.save never writes sparse members.",
         "Do not load this file; re-save the checkpoint with torch.save."),
    Rule("SH175", "harmless-data-class", Severity.INFO,
         "The pickle imports a curated harmless data class (datetime, pathlib paths, "
         "argparse.Namespace, defaultdict of a value type, joblib's array record, ...): "
         "constructing it cannot run code.",
         "Nothing to do under the default policy. A policy blocking info findings "
         "(strict) refuses it; allow it there by lowering the threshold or re-saving the "
         "checkpoint without it."),
    Rule("SH176", "not-a-model", Severity.INFO,
         "The file was named directly and its content is positively a non-model format (an "
         "image, a PDF, audio) whose signature ends every model loader (pickle, torch, "
         "numpy, joblib) within its first bytes, with no tar archive or zip directory in it: "
         "nothing in it can be loaded, so nothing in it can run.",
         "Nothing to do; scan the model files instead."),
    Rule("SH177", "allocation-request", Severity.MEDIUM,
         "The pickle calls an allowed constructor (bytes, bytearray, a torch storage or "
         "tensor type, a numpy array) with a size: no code runs, but loading asks the "
         "process for that much memory. Real checkpoints never do this; a size computed "
         "at load time cannot be bounded and is reported too.",
         "Do not load this file; re-save the checkpoint with torch.save or pickle."),
    Rule("SH190", "unknown-format", Severity.MEDIUM,
         "The content is not a format safehub can check, so it was not scanned.",
         "Convert the file to safetensors, or check it by other means."),
    Rule("SH191", "limit-exceeded", Severity.MEDIUM,
         "The file exceeds a scanner limit (size, nesting or complexity), so it was not fully "
         "checked.",
         "Raise the limit in policy `[scanner]` if the file is expected to be this large."),
    Rule("SH192", "analyzer-error", Severity.HIGH,
         "The analyzer failed on this input; a file that cannot be analyzed is treated as unsafe.",
         "Report this as a safehub bug with the file if you trust it."),
    Rule("SH193", "unreadable", Severity.MEDIUM,
         "The file could not be read.",
         "Check that the path exists and is readable."),
    # --- SH2xx: policy ---------------------------------------------------------------------
    Rule("SH200", "policy-denied", Severity.HIGH,
         "The policy denies this request.",
         "See the decision trail for the rule that denied it."),
    Rule("SH201", "owner-not-trusted", Severity.HIGH,
         "The repository owner is not trusted by the policy.",
         "Add the owner to `trusted_owners`, or allow the repo in `[repos]`."),
    Rule("SH202", "commit-not-pinned", Severity.MEDIUM,
         "The policy requires a full commit pin for this repository.",
         "Pin the repository to a 40-hex commit SHA in policy `[repos]`."),
    Rule("SH203", "url-not-allowed", Severity.HIGH,
         "A download URL is outside the policy's allowlist.",
         "Add the URL prefix to `[downloads] allowed_urls`."),
    Rule("SH204", "signature-required", Severity.HIGH,
         "The policy requires a signature for this model and none was found or accepted.",
         "Sign the model with a trusted key, or add the signer's key to `[[signatures]]`."),
    Rule("SH205", "entrypoint-not-allowed", Severity.HIGH,
         "The entrypoint is not in the repository's allowed list.",
         "Add it to the repo's `entrypoints` in policy `[repos]`."),
    # --- SH3xx: integrity and signatures ---------------------------------------------------
    Rule("SH300", "digest-mismatch", Severity.CRITICAL,
         "A file's SHA-256 differs from the pinned or recorded digest.",
         "Re-download the file from its source; if the change is expected, update the pin."),
    Rule("SH301", "signature-invalid", Severity.CRITICAL,
         "The signature does not verify against the trusted key or certificate chain.",
         "Obtain a correctly signed copy, or check which key signed it."),
    Rule("SH302", "unsigned-file", Severity.HIGH,
         "A file is present that the signature does not cover.",
         "Remove the file, or re-sign the model including it."),
    Rule("SH303", "signed-file-missing", Severity.HIGH,
         "A file the signature covers is missing.",
         "Restore the file from the signed release."),
    Rule("SH304", "signature-missing", Severity.MEDIUM,
         "No signature was found where the policy expects one.",
         "Sign the model (`safehub sign`) or place its model.sig beside it."),
    Rule("SH305", "unsafe-path", Severity.CRITICAL,
         "The model tree or its signed manifest holds a path safehub refuses to verify: a "
         "symlink, a special file, an absolute path or one that climbs out with `..`.",
         "Replace symlinks with the files they point to and re-sign; never load a model whose "
         "signed manifest names paths outside it."),
    Rule("SH306", "certificate-invalid", Severity.CRITICAL,
         "The signing certificate does not chain to a trusted CA, is expired or not yet valid, "
         "or may not be used for signing.",
         "Verify against the CA that issued the signer's certificate, or have the model "
         "re-signed with a currently valid code-signing certificate."),
    Rule("SH307", "commit-not-in-repo", Severity.CRITICAL,
         "A commit asked for by SHA (or pinned) is on no branch or tag of the repository: "
         "GitHub serves a fork's commits under the parent's URLs, so it may be a fork's code.",
         "Load the fork by its own name (its owner's trust then applies), or name the "
         "branch or tag of the repository that holds the commit."),
    # --- SH4xx: cache ----------------------------------------------------------------------
    Rule("SH400", "cache-tampered", Severity.CRITICAL,
         "A cached file changed since it was downloaded and recorded.",
         "Delete the cached copy and fetch it again; investigate who changed it."),
    Rule("SH401", "cache-unrecorded", Severity.LOW,
         "A cached file has no recorded provenance (lockfile or safehub cache record).",
         "Fetch it through safehub, or pin it in `safehub.lock`."),
    Rule("SH402", "unsafe-format", Severity.LOW,
         "The file uses a pickle-based format although it is clean; pickle formats can hide code.",
         "Convert it to safetensors with `safehub convert` (or `safehub audit --fix`)."),
    Rule("SH540", "torch-cache-mismatch", Severity.CRITICAL,
         "A file torch.hub downloaded (`<hub_dir>/checkpoints`) does not match the digest that "
         "vouches for it (the SHA-256 prefix in its name, or a pin): it is not imported into "
         "safehub's cache.",
         "Find out what changed it and delete it; run online so safehub downloads the URL and "
         "verifies it itself."),
    Rule("SH541", "torch-cache-unvouched", Severity.LOW,
         "A file torch.hub downloaded is not used as a source: no hash prefix in its name and "
         "no pin ties its bytes to the URL (or it is a link, not a regular file, or too big).",
         "Pin its SHA-256 in policy `[downloads.pins]` or the lockfile, or run online."),
    Rule("SH542", "torch-repo-unverified", Severity.MEDIUM,
         "A torch.hub repository folder (`<hub_dir>/<owner>_<name>_<ref>`) is not used: the "
         "commit it holds cannot be verified (no lockfile entry whose tree digest it matches).",
         "Fill safehub's cache online (`safehub lock owner/name:ref` or one online load), then "
         "work offline with SAFEHUB_OFFLINE=1."),
    # --- SH5xx: sandbox --------------------------------------------------------------------
    Rule("SH500", "isolation-missing", Severity.HIGH,
         "A mandatory sandbox layer is not available on this machine.",
         "Run on a host that supports it (see `safehub doctor`), or make the layer optional in "
         "policy `[sandbox] required_layers`."),
    Rule("SH501", "sandbox-limit", Severity.MEDIUM,
         "The sandboxed code hit a resource limit (time, memory, processes, file size).",
         "Raise the limit in policy `[sandbox]` if the model legitimately needs more."),
    Rule("SH502", "sandbox-violation", Severity.HIGH,
         "The sandboxed code attempted an operation the sandbox forbids.",
         "Do not use this repository."),
    Rule("SH503", "bad-result", Severity.HIGH,
         "The sandboxed code returned something other than a mapping of tensors.",
         "Use an entrypoint that returns a state dict of tensors."),
    Rule("SH504", "sandbox-crashed", Severity.MEDIUM,
         "The sandboxed child died (killed by a signal, or exited) without returning a result.",
         "If the model is large, raise policy `[sandbox] memory_mb`; otherwise do not use this "
         "repository."),
    Rule("SH505", "repo-code-error", Severity.MEDIUM,
         "The repository's code raised an exception inside the sandbox (import, entrypoint or "
         "its arguments).",
         "Check the entrypoint name and its arguments (`safehub help REPO ENTRY`)."),
    Rule("SH520", "unknown-entrypoint", Severity.LOW,
         "The repository's hubconf.py has no callable entrypoint of that name.",
         "Use one of the entrypoints `safehub list REPO` shows."),
)


def rule(rule_id: str) -> Rule:
    """The rule with this id; ``KeyError`` for an unknown id is a programming error."""
    return RULES[rule_id]
