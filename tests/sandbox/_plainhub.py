"""Plain torch.hub, the unsafe way, in a throwaway process: the "before" of every attack.

Run as a script, it imports torch once and then serves requests (one JSON object per
line on stdin). Each request is executed in a fresh fork, exactly as a user's own
process would run it: ``torch.hub.load(dir, entry, source="local", trust_repo=True)``,
or ``torch.hub.list`` / ``torch.hub.help`` on a copy of the repo placed in the hub
cache (torch.hub.list/help take only GitHub names). The answer is one JSON line:
``{"exit": status, "timed_out": bool, "result": {...}}``. Tensors returned by a load
are written to ``out`` (safetensors) by the forked process itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time


def _run(request: dict) -> dict:
    import torch
    import torch.hub

    os.environ["TORCH_HOME"] = request["torch_home"]
    op, repo = request["op"], request["repo"]
    if op == "load":
        value = torch.hub.load(repo, request["entry"], *request.get("args", []),
                               source="local", trust_repo=True, **request.get("kwargs", {}))
        if isinstance(value, torch.nn.Module):
            value = value.state_dict()
        result = {"type": f"{type(value).__module__}.{type(value).__qualname__}"}
        if request.get("probe"):
            # What a caller commonly does next with a returned object: save or cache it.
            import pickle

            try:
                pickle.dumps(value)
                result["pickled"] = True
            except Exception as exc:  # reported to the test
                result["pickled"] = repr(exc)
        if isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
            from safetensors.torch import save_file

            save_file({k: v.detach().clone().contiguous() for k, v in value.items()},
                      request["out"])
            result["saved"] = True
        return result
    hub_dir = os.path.join(request["torch_home"], "hub")
    target = os.path.join(hub_dir, "plain_repo_main")
    if not os.path.isdir(target):
        shutil.copytree(repo, target, symlinks=True)
    if op == "list":
        return {"entrypoints": torch.hub.list("plain/repo:main", trust_repo=True,
                                              skip_validation=True)}
    return {"doc": torch.hub.help("plain/repo:main", request["entry"], trust_repo=True,
                                  skip_validation=True)}


def _serve_one(request: dict) -> dict:
    status_path = request["status"]
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os.dup2(2, 1)  # torch.hub prints to stdout, which carries this runner's answers
        code = 0
        try:
            result = {"ok": True, **_run(request)}
        except BaseException as exc:  # reported to the test
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            code = 1
        with open(status_path, "w") as fh:
            json.dump(result, fh)
        os._exit(code)
    deadline = time.monotonic() + request.get("timeout", 30)
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    result = None
    if os.path.exists(status_path):
        with open(status_path) as fh:
            result = json.load(fh)
    return {"exit": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
            "result": result}


def main() -> None:
    import torch

    torch.set_num_threads(1)  # fork-safe: no OpenMP pool before the forks
    sys.stdout.write(json.dumps({"ready": os.getpid()}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        sys.stdout.write(json.dumps(_serve_one(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
