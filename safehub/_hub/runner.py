"""Running repository code the safe way: policy -> fetch -> verify -> sandbox.

This is where the stages meet for ``load``, ``list`` and ``help``: the policy
decides the repo (and, for local folders, the path), the fetch layer supplies a
verified read-only checkout, required signatures are checked on exactly that
tree, the policy decides whether this machine's isolation is enough, and the
sandbox runs the code with the policy's limits. Downloads the code asks for are
brokered back through the same policy and fetch layer.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from safehub._policy.decide import Decision, IsolationRequest, RepoRequest, TrustRepo
from safehub._policy.policy import Policy, load_policy
from safehub._tree import copy_tree, links_leaving, walk
from safehub.errors import FetchError, IntegrityError, PolicyViolation, SafehubError

if TYPE_CHECKING:
    from safehub._fetch.fetcher import Fetcher
    from safehub._fetch.lockfile import Lockfile
    from safehub._sandbox.spec import (
        JSONValue,
        Layer,
        LayerStatus,
        Operation,
        SandboxLimits,
        SandboxResult,
    )
    from safehub._sandbox.supervisor import Sandbox

__all__ = ["HubCall", "PolicyBroker", "also_policies", "hub_lockfile", "prestart",
           "run_hub_call",
           "verify_signatures"]

log = logging.getLogger("safehub")

# Policies that must allow a hub call besides the one it runs under (the outer scopes of
# nested enforce() calls): their repo and download decisions, pins, signature rules and
# scans apply too (see Fetcher's ``also``).
_ALSO: ContextVar[tuple[Policy, ...]] = ContextVar("safehub_also_policies", default=())


@contextlib.contextmanager
def also_policies(policies: Sequence[Policy]) -> Iterator[None]:
    """Hub calls made in this context (this thread or task) must satisfy ``policies`` too."""
    token = _ALSO.set((*_ALSO.get(), *policies))
    try:
        yield
    finally:
        _ALSO.reset(token)

Source = Literal["github", "local"]


@dataclass(frozen=True)
class HubCall:
    """One torch.hub-style call: which repo, which operation, with which arguments."""

    repo_or_dir: str
    op: Operation
    entrypoint: str | None = None
    args: Sequence[JSONValue] = ()
    kwargs: Mapping[str, JSONValue] = field(default_factory=dict)
    source: Source = "github"
    trust_repo: TrustRepo = None
    force_reload: bool = False
    timeout_s: float | None = None  # can only tighten the policy's limit
    memory_mb: int | None = None  # can only tighten the policy's limit
    seed: int | None = None  # torch/random/numpy seeded in the child before the import
    trust_nested: tuple[str, ...] = ()  # repos the entrypoint may torch.hub.load, this call
    as_file: bool = False  # load: the checked safetensors file, not tensors (no torch here)
    lockfile: str | None = None  # safehub.lock: commits, file digests, local folders' trees
    frozen: bool = False  # refuse whatever the lockfile does not list


class PolicyBroker:
    """The sandbox's download broker: every request goes through the policy and fetch layer.

    Repo code asks by URL (weights) or ``owner/repo[:ref]`` (other repos); what is
    returned has been policy-decided, pinned, hashed and scanned. A nested repo is
    decided with the outer call's context: it is trusted for this call when the
    caller named it in ``trust_nested`` (as ``trust_repo=True`` would trust it),
    and a refusal names the outer repo, the keyword, the flag and the policy line.
    """

    def __init__(self, fetcher: Fetcher, requester: str | None,
                 trust_nested: Sequence[str] = (), outer: str | None = None):
        self.fetcher = fetcher
        self.requester = requester
        self.outer = outer or requester
        self.trust_nested = tuple(_nested_key(spec) for spec in trust_nested)
        self.served: list[str] = []

    def fetch(self, url: str, *, file_name: str | None, check_hash: bool) -> Path:
        cached = self.fetcher.fetch_url(url, file_name=file_name, check_hash=check_hash,
                                        repo=self.requester)
        self.served.append(url)
        return cached.path

    def trusts(self, repo: str) -> bool:
        """Whether the caller trusted ``owner/name[:ref]`` for this call."""
        name, ref = _nested_key(repo)
        return any(t_name == name and (t_ref is None or t_ref == ref)
                   for t_name, t_ref in self.trust_nested)

    def fetch_repo(self, repo: str, *, force_reload: bool) -> Path:
        trusted = self.trusts(repo)
        try:
            checkout = self.fetcher.fetch_repo(repo, force_reload=force_reload,
                                               trust_repo=True if trusted else None)
        except PolicyViolation as exc:
            if trusted:
                raise
            base = (exc.fix or "").replace(" or pass trust_repo=True / --trust-repo", "")
            name = repo.partition(":")[0]
            raise PolicyViolation(
                f"{exc.message} (loaded by the entrypoint of {self.outer or 'the call'} with "
                "torch.hub.load)", subject=repo, trail=exc.trail,
                fix=(f"{base}; or trust it for this call only: trust_nested=[{name!r}] "
                     f"(CLI: --trust-nested {name})")) from exc
        verify_signatures(checkout.decision, checkout.path, checkout.repo)
        self.served.append(repo)
        return checkout.path


def _nested_key(spec: str) -> tuple[str, str | None]:
    # One canonical form for matching: owner/name compared casefolded (GitHub names
    # are case-insensitive), the ref compared exactly when one is given.
    from safehub._fetch.github import RepoSpec

    parsed = RepoSpec.parse(spec)
    return parsed.repo.casefold(), parsed.ref


def verify_signatures(decision: Decision, tree: Path, subject: str) -> list[str]:
    """Check every signature the decision requires on ``tree``; returns the signers."""
    from safehub._signing import model as signing

    signers = []
    for req in decision.requirements:
        if req.kind != "signature":
            continue
        errors: list[str] = []
        verified = None
        for anchor in req.anchors:
            is_key = anchor in req.public_keys
            try:
                result = signing.verify(
                    tree, public_key=anchor if is_key else None,
                    certificate_chain=None if is_key else [anchor],
                    ignore_unsigned_files=req.ignore_unsigned_files)
            except SafehubError as exc:  # missing signature, unreadable key
                errors.append(f"{anchor}: {exc.message}")
                continue
            if result.ok:
                verified = result
                break
            errors.append(f"{anchor}: " + "; ".join(f.message for f in result.failures[:3]))
        if verified is None:
            raise IntegrityError(
                f"SH301 {subject} is not signed by a key the policy trusts ({req.rule})",
                subject=subject,
                fix=f"obtain a copy signed by one of: {', '.join(req.anchors)}; "
                f"details: {' | '.join(errors)}")
        signer = verified.signer.describe() if verified.signer else "unknown signer"
        log.info("%s: signature by %s verified (%s)", subject, signer, req.rule)
        signers.append(signer)
    return signers


def _limits(policy: Policy, call: HubCall) -> SandboxLimits:
    from safehub._sandbox.spec import SandboxLimits

    s = policy.model.sandbox
    limits = SandboxLimits(timeout_s=s.timeout_s, memory_mb=s.memory_mb, cpu_s=s.cpu_s,
                           max_processes=s.max_processes, max_file_mb=s.max_file_mb,
                           max_open_files=s.max_open_files)
    return limits.tightened(timeout_s=call.timeout_s, memory_mb=call.memory_mb)


def hub_lockfile(call: HubCall) -> Lockfile | None:
    """The lockfile a hub call names, which must exist (a mistyped path is an error, not
    an empty lockfile); None when it names none."""
    from safehub._fetch.lockfile import Lockfile as LockfileType

    if call.lockfile is None:
        return None
    if not os.path.isfile(call.lockfile):
        raise FetchError(f"lockfile {call.lockfile} not found", subject=call.lockfile,
                         fix="create it with `safehub lock OWNER/REPO[:REF]` or "
                         "`safehub lock --path DIR`, or name the right file")
    return LockfileType.load(call.lockfile, missing_ok=False)


def _local_repo(policy: Policy, call: HubCall, stack: contextlib.ExitStack,
                fetcher: Fetcher) -> Path:
    """The folder to run. When a signature is required (by the policy or any of the
    fetcher's ``also`` policies) or the lockfile binds the folder (or is frozen), a private
    read-only copy is made and verified, and the sandbox runs that copy: what was verified
    is what runs, whatever happens to the original folder in between."""
    path = Path(os.path.expanduser(call.repo_or_dir))
    if not (path / "hubconf.py").is_file():
        raise FetchError(f"{path} has no hubconf.py", subject=str(path),
                         fix="point at a torch.hub repository folder (one with hubconf.py)")
    # Landlock grants the sandbox the folder by path; a hard link in it to a file elsewhere
    # (a key, a token) would be readable through that grant. Refuse such links.
    leaving = links_leaving(path)
    if leaving:
        raise FetchError(
            f"{leaving[0]} is hard-linked to a file outside {path}"
            + (f" (and {len(leaving) - 1} more files)" if len(leaving) > 1 else ""),
            subject=str(path),
            fix="load a copy without hard links (cp -r, or git clone --no-hardlinks)")
    request = RepoRequest(str(path), entrypoint=call.entrypoint, source="local")
    decision = policy.check(request)
    signatures = [r for other in fetcher.also for r in other.check(request).requirements
                  if r.kind == "signature"]
    decision = replace(decision, requirements=(*decision.requirements, *signatures))
    signed = decision.requirement("signature") is not None
    listed = fetcher.lockfile is not None and fetcher.lockfile.local(path) is not None
    if not listed:
        # A frozen lockfile refuses an unlisted folder here, before anything is copied:
        # the copy reads and writes every byte of the folder (a sparse 4 GB file, 8 KB on
        # disk, became 4 GB of temporary files and 26 s of work before that refusal).
        fetcher.check_local(path)
    if not signed and not listed:
        return path
    budget = fetcher.locked_size(path) if listed else None
    private = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="safehub-repo-")))
    copy = private / path.name
    # Links are copied as links: the verifier and the lockfile's hash refuse them rather
    # than following them. A locked folder's copy stops at its locked size (a file added
    # or grown since, a sparse terabyte, would otherwise be written out in full before
    # the hash refused it), and leaves out git's data, which the lock does not cover.
    if budget is None:
        copy_tree(path, copy)
    else:
        copy_tree(path, copy, ignore=_unlocked_top(path),
                  copy_function=_bounded_copy(budget, path, fetcher))
    _read_only(copy)
    if listed:
        fetcher.check_local(path, contents=copy)
    if signed:
        verify_signatures(decision, copy, str(path))
    return copy


def _unlocked_top(root: Path) -> Callable[[str, list[str]], set[str]]:
    from safehub._fetch.lockfile import UNLOCKED_TOP

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(UNLOCKED_TOP) & set(names) if folder == os.fspath(root) else set()

    return ignore


def _bounded_copy(budget: int, root: Path, fetcher: Fetcher) -> Callable[[str, str], None]:
    """A copy function that refuses (SH300) once the files copied exceed ``budget``
    bytes, whatever they claimed when the folder was checked."""
    left = budget

    def copy(source: str, target: str) -> None:
        nonlocal left
        # Without blocking: a FIFO swapped in for a file since the walk is refused.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise fetcher.size_mismatch(root, f"{source} is no longer a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
            while chunk := src.read(min(1 << 20, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise fetcher.size_mismatch(root, f"more than its locked {budget} bytes")
                dst.write(chunk)
        shutil.copystat(source, target)

    return copy


def _local_content(path: Path) -> str | None:
    from safehub._hub.reuse import local_tree_identity

    digest = local_tree_identity(path)
    return None if digest is None else f"tree {digest}"


def _read_only(tree: Path) -> None:
    from safehub._sandbox.sharing import folder_mode, read_only_file_mode, read_only_folder_mode

    private = tree.parent
    private.chmod(folder_mode())  # the sandbox reaches the copy through it
    for directory, _dirs, files in walk(tree):
        for name in files:
            target = Path(directory) / name
            if not target.is_symlink():
                target.chmod(read_only_file_mode())
        Path(directory).chmod(read_only_folder_mode())


def _import_torch_meanwhile() -> threading.Thread | None:
    """Import torch (the result is mapped into torch tensors) while the child runs, not
    after: on a machine with more than one CPU the two overlap."""
    if "torch" in sys.modules:
        return None
    thread = threading.Thread(target=importlib.import_module, args=("torch",),
                              name="safehub-import-torch", daemon=True)
    thread.start()
    return thread


def _sandbox_for(repo_dir: Path) -> Sandbox:
    """The warm sandbox whose zygote preloaded this repo's declared, installed packages."""
    from safehub._hub.warm import sandbox_for

    return sandbox_for(repo_dir)


def prestart(call: HubCall) -> Sandbox | None:
    """Start the call's zygote and bytecode in the background (see :mod:`warm`)."""
    from safehub._hub.warm import prestart as start

    return start(call.repo_or_dir, call.source)


def run_hub_call(call: HubCall, policy: Policy | str | os.PathLike[str] | None = None, *,
                 fetcher: Fetcher | None = None) -> SandboxResult:
    """Decide, fetch, verify and run one hub call in the sandbox."""
    from safehub._fetch.fetcher import Fetcher
    from safehub._fetch.location import get_dir
    from safehub._hub.reuse import reuse_identity
    from safehub._hub.torchscript import (
        accepts_torchscript,
        take_archives,
        take_file_archives,
    )
    from safehub._sandbox.spec import Layer, SandboxRequest
    from safehub._torchdep import require_torch

    require_torch(f"hub.{call.op.value}")
    for spec in call.trust_nested:  # a malformed name is the caller's error, before any work
        _nested_key(spec)
    # The zygote's start (importing torch and the declared packages, seconds) and, for
    # the API, this process's own torch import overlap the policy, fetch and checks.
    early = prestart(call)
    importer = (_import_torch_meanwhile() if call.op.value == "load" and not call.as_file
                else None)
    policy = load_policy(policy)
    supplied_fetcher = fetcher is not None
    fetcher = fetcher or Fetcher(policy, hub_dir=get_dir(), lockfile=hub_lockfile(call),
                                 frozen=call.frozen, also=_ALSO.get())
    with contextlib.ExitStack() as stack:
        requester: str | None
        content: str | None  # what identifies the code a warm child may be reused for
        if call.source == "local":
            repo_dir = _local_repo(policy, call, stack, fetcher)
            requester = None
            # A private verified copy lives for this call only: never reused.
            content = None if repo_dir != Path(os.path.expanduser(call.repo_or_dir)) else (
                _local_content(repo_dir))
        elif call.source == "github":
            checkout = fetcher.fetch_repo(call.repo_or_dir, force_reload=call.force_reload,
                                          trust_repo=call.trust_repo, entrypoint=call.entrypoint)
            verify_signatures(checkout.decision, checkout.path, checkout.repo)
            repo_dir, requester = checkout.path, checkout.repo
            content = f"commit {checkout.commit} tree {checkout.tree_sha256}"
        else:
            raise SafehubError(f"unknown source {call.source!r}", subject=call.repo_or_dir,
                               fix="use source='github' or source='local'")
        sandbox = early if early is not None and repo_dir == Path(
            os.path.expanduser(call.repo_or_dir)) else _sandbox_for(repo_dir)

        def check_layers(layers: dict[Layer, LayerStatus]) -> None:
            # Judged on the layers of the child that will run the code, before it gets
            # the call (no separate probe child).
            policy.check(IsolationRequest({layer.value: None if status.available
                                           else status.detail
                                           for layer, status in layers.items()}))

        request = SandboxRequest(repo_dir, call.op, call.entrypoint, tuple(call.args),
                                 dict(call.kwargs), limits=_limits(policy, call),
                                 required_layers=frozenset(Layer(name) for name in
                                                           policy.model.sandbox.required_layers),
                                 seed=call.seed, as_file=call.as_file,
                                 script_archives=call.op.value == "load" and
                                 accepts_torchscript(policy, requester))
        broker = PolicyBroker(fetcher, requester, call.trust_nested,
                              outer=requester or str(repo_dir))
        reuse = reuse_identity(policy, fetcher, supplied_fetcher=supplied_fetcher,
                               content=content, requester=requester,
                               trust_nested=call.trust_nested)
        try:
            result = sandbox.run(request, broker, check_layers=check_layers, reuse=reuse)
        finally:
            if importer is not None:
                importer.join()
        for layer, reason in result.layers_missing.items():
            log.warning("sandbox layer %s was not applied: %s", layer.value, reason)
        if call.op.value == "load":
            subject = f"{call.repo_or_dir}:{call.entrypoint}"
            if result.file is not None:  # no torch here: the archives leave the checked file
                try:
                    shape, scripts = take_file_archives(result.file, result.shape,
                                                        policy=policy, repo=requester,
                                                        subject=subject)
                except BaseException:
                    result.file.close()
                    raise
                result = replace(result, shape=shape, torchscript=scripts)
            else:
                tensors, shape, scripts = take_archives(result.tensors, result.shape,
                                                        policy=policy, repo=requester,
                                                        subject=subject)
                result = replace(result, tensors=tensors, shape=shape, torchscript=scripts)
        return replace(result, fetched=tuple(broker.served)) if broker.served else result
