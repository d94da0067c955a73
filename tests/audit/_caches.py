"""Real caches built in temporary folders: torch.hub's layout, safehub's cache (filled by a
real Fetcher from a fake GitHub on 127.0.0.1) and the Hugging Face layout (blobs named by
content, snapshot links, refs).

Each holds clean, malicious, tampered (bytes changed after they were recorded) and
unsigned files. Payloads are harmless: they create a marker file.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safehub.fetch import Fetcher, Lockfile
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import FAST
from tests.signing.helpers import KeyPair, make_key

__all__ = [
    "Caches",
    "build_caches",
    "build_hf_repo",
    "clean_checkpoint",
    "evil_checkpoint",
    "git_blob_id",
    "torch_bytes",
]


class _Payload:
    """Pickles as ``os.system(command)``: what a malicious checkpoint carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def torch_bytes(obj: object, *, legacy: bool = False) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def clean_checkpoint(seed: int = 0, *, legacy: bool = False) -> bytes:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch_bytes({"layer.weight": torch.rand(4, 3, generator=g),
                        "layer.bias": torch.rand(4, generator=g)}, legacy=legacy)


def evil_checkpoint(marker: Path) -> bytes:
    import torch

    return torch_bytes({"layer.weight": torch.ones(2), "hook": _Payload(f"touch {marker}")})


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _named_with_prefix(stem: str, data: bytes) -> str:
    """torch's naming: ``<stem>-<first 8 hex of the SHA-256>.pth``."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def _clean_with_letter_prefix(seed: int) -> bytes:
    # A prefix made only of digits reads like a date, which audit does not take as a digest.
    while True:
        data = clean_checkpoint(seed)
        if any(c in "abcdef" for c in hashlib.sha256(data).hexdigest()[:8]):
            return data
        seed += 1000


def build_hf_repo(cache: Path, repo_id: str, files: dict[str, bytes], *,
                  revision: str | None = None, refs: tuple[str, ...] = ("main",),
                  lfs: tuple[str, ...] = (".bin", ".safetensors", ".pth", ".pt", ".sig"),
                  ) -> Path:
    """A repo in the Hugging Face layout: LFS files under their SHA-256, others under their
    Git blob id, snapshot entries as relative links, refs holding the revision."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    revision = revision or hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    blobs = repo_dir / "blobs"
    snap = repo_dir / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        digest = hashlib.sha256(data).hexdigest() if rel.endswith(lfs) else git_blob_id(data)
        (blobs / digest).write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blobs / digest, link.parent), link)
    for ref in refs:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(revision)
    return snap


@dataclass
class Caches:
    """Where everything is, by label."""

    root: Path
    hub: Path
    hf: Path
    policy: Path
    lockfile: Path
    marker: Path
    key: KeyPair
    paths: dict[str, Path] = field(default_factory=dict)


def _policy(path: Path, fake: FakeHub, key: KeyPair) -> Path:
    path.write_text(
        'schema = 1\nname = "audit-test"\nextends = "default"\n'
        'loosen = ["downloads.allow_http_loopback", "downloads.github_api", "trust.owners", '
        '"downloads.allowed_urls"]\n'
        '[trust]\nowners = ["pytorch", "acme"]\n'
        f'[downloads]\nallow_http_loopback = true\ngithub_api = "{fake.api}"\n'
        f'allowed_urls = ["{fake.url}/", "https://huggingface.co/"]\n'
        '[[signatures]]\nscope = "signed/*"\n'
        f'public_keys = ["{key.public_path.name}"]\n', encoding="utf-8")
    return path


def _safehub_cache(c: Caches, fake: FakeHub) -> None:
    clean = clean_checkpoint(10)
    url_clean = fake.add_file("/weights/clean.pth", clean)
    url_tampered = fake.add_file("/weights/tampered.pth", clean_checkpoint(11))
    fake.add_repo("acme/tools", {"hubconf.py": b"dependencies = []\n",
                                 "weights.pth": clean_checkpoint(12)})
    lock = Lockfile(c.lockfile)
    fetcher = Fetcher(c.policy, hub_dir=c.hub, http=FAST, lockfile=lock)
    c.paths["sh-clean"] = fetcher.fetch_url(url_clean).path
    c.paths["sh-tampered"] = fetcher.fetch_url(url_tampered).path
    checkout = fetcher.fetch_repo("acme/tools")
    c.paths["sh-checkout"] = checkout.path
    lock.save()
    # Changed behind safehub's back, after download and lock.
    target = c.paths["sh-tampered"]
    os.chmod(target, 0o644)
    target.write_bytes(clean_checkpoint(99))
    added = checkout.path / "added.pth"
    os.chmod(checkout.path, 0o755)
    added.write_bytes(clean_checkpoint(13))
    c.paths["sh-added"] = added


def _torch_hub(c: Caches) -> None:
    ckpt = c.hub / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    good = _clean_with_letter_prefix(1)
    c.paths["th-clean"] = ckpt / _named_with_prefix("resnet", good)
    c.paths["th-clean"].write_bytes(good)
    original = _clean_with_letter_prefix(2)
    c.paths["th-tampered"] = ckpt / _named_with_prefix("tampered", original)
    c.paths["th-tampered"].write_bytes(clean_checkpoint(3))  # same name, other bytes
    c.paths["th-evil"] = ckpt / "evil.pth"
    c.paths["th-evil"].write_bytes(evil_checkpoint(c.marker))
    c.paths["th-unrecorded"] = ckpt / "plain.pth"
    c.paths["th-unrecorded"].write_bytes(clean_checkpoint(4, legacy=True))
    for folder, hubconf in (("pytorch_vision_main", b"dependencies = ['torch']\n"),
                            ("stranger_tools_v1.0", b"import os\n")):
        (c.hub / folder).mkdir()
        (c.hub / folder / "hubconf.py").write_bytes(hubconf)
        c.paths[folder] = c.hub / folder
    (c.hub / "trusted_list").write_text("stranger_tools\npytorch_vision\n")
    c.paths["trusted_list"] = c.hub / "trusted_list"


def _hf(c: Caches) -> None:
    from safehub.signing import sign

    # Signed: built as plain files, signed, then laid out as blobs and links.
    staging = c.root / "staging"
    staging.mkdir()
    weights = clean_checkpoint(20)
    (staging / "pytorch_model.bin").write_bytes(weights)
    (staging / "config.json").write_bytes(b'{"hidden": 3}\n')
    sig = sign(staging, private_key=c.key.private_path)
    files = {p.name: p.read_bytes() for p in staging.iterdir()}
    assert sig.name in files
    c.paths["hf-signed"] = build_hf_repo(c.hf, "signed/good", files)
    # Signed, then one signed file tampered in its blob.
    staging2 = c.root / "staging2"
    staging2.mkdir()
    (staging2 / "pytorch_model.bin").write_bytes(clean_checkpoint(21))
    sign(staging2, private_key=c.key.private_path)
    snap = build_hf_repo(c.hf, "signed/tampered",
                         {p.name: p.read_bytes() for p in staging2.iterdir()})
    c.paths["hf-signed-tampered"] = snap
    blob = (snap / "pytorch_model.bin").resolve()
    blob.write_bytes(clean_checkpoint(22))
    c.paths["hf-unsigned"] = build_hf_repo(
        c.hf, "signed/unsigned", {"pytorch_model.bin": clean_checkpoint(23)})
    c.paths["hf-clean"] = build_hf_repo(
        c.hf, "plain/clean", {"pytorch_model.bin": clean_checkpoint(24),
                              "config.json": b"{}\n", "nested/extra.pt": clean_checkpoint(25)})
    snap = build_hf_repo(c.hf, "plain/tampered", {"pytorch_model.bin": clean_checkpoint(26)})
    c.paths["hf-tampered"] = snap
    (snap / "pytorch_model.bin").resolve().write_bytes(clean_checkpoint(27))
    c.paths["hf-evil"] = build_hf_repo(c.hf, "plain/evil",
                                       {"pytorch_model.bin": evil_checkpoint(c.marker)})


def build_caches(root: Path, fake: FakeHub) -> Caches:
    """Everything: ``<root>/torch/hub`` (with ``safehub/`` inside) and ``<root>/hf``."""
    root.mkdir(parents=True, exist_ok=True)
    key = make_key(root, "signer")
    c = Caches(root=root, hub=root / "torch" / "hub", hf=root / "hf",
               policy=root / "policy.toml", lockfile=root / "safehub.lock",
               marker=root / "markers" / "pwned", key=key)
    c.marker.parent.mkdir()
    c.hub.mkdir(parents=True)
    c.hf.mkdir()
    _policy(c.policy, fake, key)
    _safehub_cache(c, fake)
    _torch_hub(c)
    _hf(c)
    shutil.rmtree(root / "staging")
    shutil.rmtree(root / "staging2")
    return c
