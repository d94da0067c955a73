"""Cache layouts are recognised wherever the path points: a Hugging Face cache as ``HF_HOME``,
``HF_HOME/hub``, a ``models--*`` folder, a snapshot, one file or any parent; torch's hub as
``TORCH_HOME``, its ``hub``, ``checkpoints`` or one file, or any parent. Tampering (bytes that
no longer match a content-addressed name or torch's ``-<sha256 prefix>.`` name) is found
whichever path names it, and the same caches untampered are clean.

torch's side is written by torch itself (``torch.hub.load_state_dict_from_url`` from a
server on 127.0.0.1); the Hugging Face side as ``huggingface_hub`` lays it out (blobs named
by content, relative snapshot links, ``refs/main``).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.audit._caches import build_hf_repo, clean_checkpoint
from tests.conftest import CliResult

Cli = Callable[..., CliResult]


@dataclass
class Homes:
    top: Path
    hf_home: Path
    torch_home: Path
    blob: Path  # the blob behind snapshots/<rev>/pytorch_model.bin
    link: Path  # that snapshot entry
    checkpoint: Path  # torch's download, named <stem>-<sha256 prefix>.pth


def _letter_prefix(seed: int) -> bytes:
    while True:
        data = clean_checkpoint(seed)
        if any(c in "abcdef" for c in hashlib.sha256(data).hexdigest()[:8]):
            return data
        seed += 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 for torch.hub to download from."""
    folder = tmp_path_factory.mktemp("www")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def build_homes(top: Path, served: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, *,
                tamper: bool) -> Homes:
    import torch.hub

    url, www = served
    hf_home = top / "home" / ".cache" / "huggingface"
    torch_home = top / "home" / ".cache" / "torch"
    snap = build_hf_repo(hf_home / "hub", "acme/detector",
                         {"pytorch_model.bin": clean_checkpoint(31), "config.json": b"{}\n"})
    link = snap / "pytorch_model.bin"
    blob = link.resolve()
    (hf_home / "hub" / ".locks").mkdir()
    (hf_home / "token").write_text("not-a-secret\n")
    data = _letter_prefix(32)
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (www / name).write_bytes(data)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    # torch writes its own layout, checking the hash prefix as it downloads.
    torch.hub.load_state_dict_from_url(f"{url}/{name}", check_hash=True, progress=False,
                                       weights_only=True)
    checkpoint = torch_home / "hub" / "checkpoints" / name
    assert checkpoint.is_file()
    if tamper:
        blob.write_bytes(clean_checkpoint(33))
        # Same name, other bytes: a file torch itself would refuse to have downloaded.
        evil = torch_home / "hub" / "checkpoints" / "tampered-deadbeef.pth"
        evil.write_bytes(clean_checkpoint(34))
        checkpoint = evil
    return Homes(top, hf_home, torch_home, blob, link, checkpoint)


@pytest.fixture
def tampered(tmp_path: Path, served: tuple[str, Path],
             monkeypatch: pytest.MonkeyPatch) -> Homes:
    return build_homes(tmp_path / "t", served, monkeypatch, tamper=True)


@pytest.fixture
def untampered(tmp_path: Path, served: tuple[str, Path],
               monkeypatch: pytest.MonkeyPatch) -> Homes:
    return build_homes(tmp_path / "c", served, monkeypatch, tamper=False)


HF_PATHS: dict[str, Callable[[Homes], Path]] = {
    "HF_HOME": lambda h: h.hf_home,
    "HF_HOME/hub": lambda h: h.hf_home / "hub",
    "models--acme--detector": lambda h: h.hf_home / "hub" / "models--acme--detector",
    "snapshot": lambda h: h.link.parent,
    "snapshot entry": lambda h: h.link,
    "blob": lambda h: h.blob,
    "blobs folder": lambda h: h.blob.parent,
    "common parent": lambda h: h.top,
    "~/.cache": lambda h: h.hf_home.parent,
}
TORCH_PATHS: dict[str, Callable[[Homes], Path]] = {
    "TORCH_HOME": lambda h: h.torch_home,
    "TORCH_HOME/hub": lambda h: h.torch_home / "hub",
    "checkpoints": lambda h: h.torch_home / "hub" / "checkpoints",
    "checkpoint file": lambda h: h.checkpoint,
    "common parent": lambda h: h.top,
    "~/.cache": lambda h: h.torch_home.parent,
}


def _audit(cli: Cli, path: Path) -> tuple[int, dict[str, list[str]]]:
    result = cli("audit", path, "--no-state", "-f", "json")
    report = json.loads(result.out)
    rules = {entry["path"]: [f["rule_id"] for f in entry["findings"]]
             for entry in report["files"]}
    return result.code, rules


@pytest.mark.parametrize("label", sorted(HF_PATHS))
def test_tampered_hf_blob_found_whichever_path_names_it(cli: Cli, tampered: Homes,
                                                        label: str) -> None:
    code, rules = _audit(cli, HF_PATHS[label](tampered))
    flagged = [p for p, ids in rules.items() if "SH400" in ids and
               os.path.realpath(p) == str(tampered.blob.resolve())]
    assert flagged, rules
    assert code == 1


@pytest.mark.parametrize("label", sorted(TORCH_PATHS))
def test_tampered_torch_checkpoint_found_whichever_path_names_it(
        cli: Cli, tampered: Homes, label: str) -> None:
    code, rules = _audit(cli, TORCH_PATHS[label](tampered))
    assert "SH400" in rules.get(str(tampered.checkpoint), []), rules
    assert code == 1


@pytest.mark.parametrize("label", sorted({*HF_PATHS, *TORCH_PATHS}))
def test_the_same_caches_untampered_are_clean(cli: Cli, untampered: Homes, label: str) -> None:
    path = (HF_PATHS.get(label) or TORCH_PATHS[label])(untampered)
    code, rules = _audit(cli, path)
    assert code == 0, rules
    assert not any("SH400" in ids for ids in rules.values())


def test_parent_reads_each_layout_as_itself(cli: Cli, tampered: Homes) -> None:
    """From a common parent, the HF blob is reported once, as the snapshot entry a library
    loads (not also as a loose blob), and the token file is not a model."""
    code, rules = _audit(cli, tampered.top)
    assert code == 1
    assert str(tampered.link) in rules
    assert str(tampered.blob) not in rules
    assert not any(p.endswith("token") for p in rules)


def test_a_cache_written_by_huggingface_hub_itself(cli: Cli, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``snapshot_download`` from a Hub-compatible server on 127.0.0.1 writes the cache;
    the audit finds it clean from HF_HOME, then finds a blob changed behind its name."""
    hub = pytest.importorskip("huggingface_hub")
    from tests.remote.servers import HfRepo, RangeServer

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    # Generous timeouts: the loopback server answers slowly on a saturated machine.
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 300)
    repo = tmp_path / "upstream"
    repo.mkdir()
    (repo / "pytorch_model.bin").write_bytes(clean_checkpoint(41))
    (repo / "config.json").write_bytes(b'{"hidden": 4}\n')
    server = RangeServer()
    try:
        server.repos["acme/real"] = HfRepo("d" * 40, {
            "pytorch_model.bin": repo / "pytorch_model.bin",
            "config.json": repo / "config.json"})
        hf_home = tmp_path / "home" / ".cache" / "huggingface"
        snap = Path(hub.snapshot_download("acme/real", cache_dir=hf_home / "hub",
                                          endpoint=server.url, etag_timeout=300))
    finally:
        server.close()
    link = snap / "pytorch_model.bin"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    code, rules = _audit(cli, hf_home)
    assert code == 0 and str(link) in rules, rules
    link.resolve().write_bytes(clean_checkpoint(42))
    code, rules = _audit(cli, tmp_path / "home")
    assert code == 1 and "SH400" in rules[str(link)]


def test_files_beside_a_cache_are_still_audited(cli: Cli, tmp_path: Path) -> None:
    """A folder that holds a Hugging Face repo folder next to other files: reading it as
    a cache must not hide those files, from the folder, a parent or the file itself."""
    from tests.audit._caches import evil_checkpoint

    data = tmp_path / "data"
    build_hf_repo(data, "acme/ok", {"pytorch_model.bin": clean_checkpoint(51)})
    evil = data / "project" / "evil.pt"
    evil.parent.mkdir()
    evil.write_bytes(evil_checkpoint(tmp_path / "marker"))
    (data / "loose.pt").write_bytes(evil_checkpoint(tmp_path / "marker"))
    for path in (data, tmp_path, evil.parent, evil):
        code, rules = _audit(cli, path)
        assert code == 1, (path, rules)
        assert str(evil) in rules
