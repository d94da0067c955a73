"""Plain torch.hub on a local checkout, in a throwaway process: the oracle of the
compatibility suite.

    python _torchhub_oracle.py REQUEST.json

REQUEST: {"repo": dir, "help": entry|null, "loads": [[entry, kwargs], ...],
"seed": int, "out": dir, "preimport": [package, ...]} (imported first, as a caller
would have). Writes ``out/oracle.json`` (entrypoints, doc, per load the
keys with shape and dtype or the error) and ``out/<i>.safetensors`` (the values).
Returned structures are flattened the way safehub names them (element paths joined
with '.', a module's state_dict under its path), written here independently.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any


def flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    import torch

    if isinstance(value, torch.nn.Module):
        for key, tensor in value.state_dict().items():
            out[f"{path}.{key}" if path else key] = tensor
    elif isinstance(value, torch.Tensor):
        out[path] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            flatten(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            flatten(item, f"{path}.{i}" if path else str(i), out)


def main() -> None:
    with open(sys.argv[1]) as fh:
        request = json.load(fh)
    import torch
    import torch.hub as hub
    from safetensors.torch import save_file

    for name in request.get("preimport", []):
        importlib.import_module(name)

    repo = request["repo"]
    # torch.hub.list and help take no source='local': their own steps on the folder.
    with hub._add_to_sys_path(repo):
        module = hub._import_module(hub.MODULE_HUBCONF, os.path.join(repo, hub.MODULE_HUBCONF))
    answer: dict[str, Any] = {"entrypoints": [
        f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_")]}
    if request.get("help"):
        answer["doc"] = hub._load_entry_from_hubconf(module, request["help"]).__doc__
    answer["loads"] = []
    for i, (entry, kwargs) in enumerate(request["loads"]):
        torch.manual_seed(request["seed"])
        try:
            value = hub.load(repo, entry, source="local", trust_repo=True, **kwargs)
        except BaseException as exc:  # the oracle reports, the test decides
            answer["loads"].append({"error": f"{type(exc).__name__}: {exc}"[:500],
                                    "traceback": traceback.format_exc()[-2000:]})
            continue
        flat: dict[str, Any] = {}
        flatten(value, "", flat)
        tensors = {k: v.detach().contiguous().clone() for k, v in flat.items()}
        save_file(tensors, os.path.join(request["out"], f"{i}.safetensors"))
        answer["loads"].append({"keys": {k: [list(v.shape), str(v.dtype)]
                                         for k, v in tensors.items()}})
    with open(os.path.join(request["out"], "oracle.json"), "w") as fh:
        json.dump(answer, fh)


if __name__ == "__main__":
    main()
