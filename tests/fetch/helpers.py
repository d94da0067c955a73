"""Helpers shared by the fetch tests (plain functions; fixtures are in conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path

from safehub.fetch import HttpSettings
from tests.fetch.fakehub import FakeHub

FAST = HttpSettings(timeout=5.0, retries=2, backoff=0.01, max_backoff=0.05)


def write_policy(path: Path, api_hub: FakeHub, *allowed: FakeHub, body: str = "") -> Path:
    """A policy extending `default` that trusts owner `acme` and allows the given servers."""
    urls = ", ".join(f'"{h.url}/"' for h in (api_hub, *allowed))
    path.write_text(
        'schema = 1\nname = "test"\nextends = "default"\n'
        'loosen = ["downloads.allow_http_loopback", "downloads.github_api", "trust.owners", '
        '"downloads.allowed_urls", "repos", "scanner.allowed_globals"]\n'
        f'[trust]\nowners = ["acme"]\n'
        f'[downloads]\nallow_http_loopback = true\ngithub_api = "{api_hub.api}"\n'
        f"allowed_urls = [{urls}]\n{body}", encoding="utf-8")
    return path


def torch_bytes(obj: object) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def leftovers(cache: Path) -> list[str]:
    """What a failed operation left in the cache's tmp area, files and repos."""
    found = []
    for sub in ("tmp", "files", "repos"):
        root = cache / sub
        if root.exists():
            found += [str(p.relative_to(cache)) for p in root.rglob("*")]
    return sorted(found)
