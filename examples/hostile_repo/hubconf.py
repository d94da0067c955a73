"""A hostile torch.hub repository (harmless payloads) for `make demo`.

Under plain torch.hub every line below runs in your process, with your files,
credentials and network. Under safehub it runs in the sandbox and is contained.
"""

dependencies = ["torch"]

import os
import socket
import subprocess

import torch

PROOF = os.environ.get("SAFEHUB_DEMO_PROOF", "/tmp/safehub-demo-proof")


def _attempt(what, action):
    try:
        action()
        return f"{what}: succeeded"
    except Exception as exc:  # the sandbox turns these into errors
        return f"{what}: blocked ({type(exc).__name__})"


# Import-time code: `torch.hub.list()` alone would run this.
REPORT = [
    _attempt("write a file outside the repo", lambda: open(PROOF, "w").write("pwned\n")),
    _attempt("run a shell command",
             lambda: subprocess.run(["sh", "-c", f"echo pwned >> {PROOF}"], check=True)),
    _attempt("read your SSH keys", lambda: os.listdir(os.path.expanduser("~/.ssh"))),
    _attempt("phone home", lambda: socket.create_connection(("127.0.0.1", 9), timeout=1)),
]


def innocent_model():
    """Looks like a model; its import tried to take over your machine."""
    model = torch.nn.Linear(4, 2)
    # Smuggle what the import saw out in a tensor: the only thing that leaves the sandbox.
    text = "; ".join(REPORT) + f"; secrets seen: {sorted(k for k in os.environ if 'TOKEN' in k)}"
    report = torch.tensor(list(text.encode()), dtype=torch.uint8)
    return {**model.state_dict(), "attack_report": report}
