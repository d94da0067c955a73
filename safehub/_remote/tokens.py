"""Which token a remote scan sends, and to which origin.

- The Hugging Face token, found as ``huggingface_hub`` finds it: ``$HF_TOKEN``, then
  ``$HUGGING_FACE_HUB_TOKEN``, then the token file (``$HF_TOKEN_PATH``, default
  ``$HF_HOME/token``, ``$HF_HOME`` defaulting to ``$XDG_CACHE_HOME/huggingface`` or
  ``~/.cache/huggingface``); none when ``$HF_HUB_DISABLE_IMPLICIT_TOKEN`` is set. It is bound
  to the exact origin (scheme, host, port) of the Hugging Face endpoint (``$HF_ENDPOINT``).
- ``SAFEHUB_TOKEN_<ID>`` with ``SAFEHUB_TOKEN_<ID>_ORIGIN``, as for every fetch
  (:mod:`safehub._fetch.credentials`), for other origins (a private https:// server).

A token goes only to its origin, and for the rest of a redirect chain never again once a
hop has left that origin: the Hub's redirects to its file CDN carry signed URLs, not the
token, and a redirect target cannot steer the token back to a path of its choosing.
"""

from __future__ import annotations

import os
from pathlib import Path

from safehub._fetch.credentials import Credentials, Origin
from safehub._remote.target import hf_endpoint

__all__ = ["Origin", "hf_token", "remote_credentials"]

_TRUTHY = {"1", "on", "yes", "true"}


def hf_token() -> str | None:
    """The Hugging Face token of this environment, or None."""
    if os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN", "").strip().lower() in _TRUTHY:
        return None
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        token = os.environ.get(var, "").strip()
        if token:
            return token
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    path = Path(os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token"))
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def remote_credentials() -> Credentials:
    """Tokens by origin for remote scans: the Hugging Face token for the endpoint's
    origin, and ``SAFEHUB_TOKEN_<ID>`` tokens for theirs (never ``GITHUB_TOKEN``)."""
    token = hf_token()
    origin = Origin.of(hf_endpoint())
    tokens = {str(origin): token} if token and origin.host else {}
    return Credentials("", tokens)
