"""Compatibility with torch.hub on real public hub repositories.

Each repository is a snapshot checked out by ``python benchmarks/prepare_repos.py``
into benchmarks/.work/repos (git-ignored: their code is never part of this project).
For each, safehub's list, help and load (random-init entrypoints, one seed, no
network) are compared with plain torch.hub's on the same checkout, run in a
throwaway process (``_torchhub_oracle.py``): the same entrypoints, the same
docstring, and the same state-dict keys, shapes, dtypes and values.

A repository that is not checked out, or whose hubconf needs a package this
interpreter lacks, is skipped with the reason; so is a load that plain torch.hub
cannot do here (it would download weights). Nested repos (MiDaS loads
gen-efficientnet with torch.hub.load) come from a loopback GitHub for safehub and
from torch.hub's own cache folder for torch.hub, and are trusted for the one call
with ``trust_nested``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import safehub
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import write_policy

HERE = Path(__file__).resolve().parent
REPOS = Path(os.environ.get("SAFEHUB_COMPAT_REPOS",
                            HERE.parents[1] / "benchmarks" / ".work" / "repos"))
SEED = 0


@dataclass(frozen=True)
class Case:
    repo: str
    loads: tuple[tuple[str, dict[str, Any]], ...]
    help: str | None = None
    needs: tuple[str, ...] = ()  # importable packages the hubconf needs
    nested: tuple[tuple[str, str], ...] = ()  # (owner/name, torch.hub cache ref)
    # installed packages the calling process imports first (torch.hub then uses them, not
    # the repo's copies of the same names; so does safehub)
    preimport: tuple[str, ...] = ()
    memory_mb: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return REPOS / self.repo.replace("/", "_")


CASES = [
    Case("facebookresearch/dinov2", (("dinov2_vits14", {"pretrained": False}),
                                     ("dinov2_vits14_reg", {"pretrained": False})),
         help="dinov2_vits14"),
    Case("rwightman/gen-efficientnet-pytorch",
         (("tf_efficientnet_b0", {"pretrained": False}), ("mobilenetv3_large_100", {}),
          ("mixnet_s", {"pretrained": False})), help="mixnet_s"),
    # Its hubconf imports torchaudio (and numpy): no torchaudio wheel loads with torch
    # 2.13.0+cpu, so it runs in a venv with torch 2.9.1 and torchaudio 2.9.1 (README);
    # elsewhere it is skipped with that reason.
    Case("snakers4/silero-vad", (("silero_vad", {}),), help="silero_vad",
         needs=("torchaudio",)),
    # MiDaS_small fetches its backbone's ImageNet weights even with pretrained=False (so
    # torch.hub fails offline too); DPT_Hybrid builds its timm backbone at random.
    Case("isl-org/MiDaS", (("MiDaS_small", {"pretrained": False}),
                           ("DPT_Hybrid", {"pretrained": False})), help="MiDaS_small",
         needs=("timm", "torchvision"),
         nested=(("rwightman/gen-efficientnet-pytorch", "master"),)),
    # A sparse snapshot (hubconf.py and the torchvision package's Python sources, see
    # benchmarks/prepare_repos.py): the repo's own torchvision/ is imported, as torch.hub does.
    # Plain torch.hub cannot import such a checkout (no compiled ops) in a fresh process:
    # torchvision's _meta_registrations registers fake kernels for torchvision::nms whether
    # or not the ops loaded, "operator torchvision::nms does not exist" (pytorch/pytorch
    # issues 134947 and 157648). It works in a process that imported the installed
    # torchvision first (the checkout's copy is then never imported), the usual way to
    # call it: both sides do that here.
    Case("pytorch/vision", (("resnet18", {}), ("mobilenet_v3_small", {}),
                            ("shufflenet_v2_x0_5", {}), ("squeezenet1_1", {})),
         help="resnet18", needs=("torchvision",), preimport=("torchvision",)),
    Case("facebookresearch/dino", (("dino_vits16", {"pretrained": False}),
                                   ("dino_vits8", {"pretrained": False})),
         help="dino_vits16", needs=("torchvision",)),
    Case("mateuszbuda/brain-segmentation-pytorch", (("unet", {}),
                                                    ("unet", {"init_features": 8})),
         help="unet"),
    Case("chenyaofo/pytorch-cifar-models", (("cifar10_resnet20", {"pretrained": False}),
                                            ("cifar100_mobilenetv2_x0_5", {"pretrained": False})),
         help="cifar10_resnet20"),
    Case("lukemelas/EfficientNet-PyTorch", (("efficientnet_b0", {"pretrained": None}),
                                            ("efficientnet_b1", {"pretrained": None,
                                                                 "num_classes": 10})),
         help="efficientnet_b0"),
    Case("milesial/Pytorch-UNet", (("unet_carvana", {"pretrained": False}),),
         help="unet_carvana"),
    Case("facebookresearch/detr", (("detr_resnet50", {"pretrained": False}),),
         help="detr_resnet50", needs=("torchvision", "scipy")),
]


def _skip_reason(case: Case) -> str | None:
    if not (case.folder / "hubconf.py").is_file():
        return (f"{case.repo} is not checked out in {REPOS} "
                "(run `python benchmarks/prepare_repos.py`)")
    for name, _ in case.nested:
        if not (REPOS / name.replace("/", "_") / "hubconf.py").is_file():
            return f"{case.repo} loads {name}, which is not checked out in {REPOS}"
    missing = [p for p in case.needs if importlib.util.find_spec(p) is None]
    if missing:
        return f"{case.repo} needs {', '.join(missing)}, not installed for {sys.executable}"
    return None


def _oracle(case: Case, tmp: Path) -> dict[str, Any]:
    home = tmp / "torch-home"
    for name, ref in case.nested:  # torch.hub's own cache layout: <hub>/<owner>_<name>_<ref>
        owner, repo = name.split("/")
        shutil.copytree(REPOS / name.replace("/", "_"), home / "hub" / f"{owner}_{repo}_{ref}")
    out = tmp / "oracle"
    out.mkdir()
    request = tmp / "request.json"
    request.write_text(json.dumps({"repo": str(case.folder), "help": case.help,
                                   "loads": [list(x) for x in case.loads], "seed": SEED,
                                   "out": str(out), "preimport": list(case.preimport)}))
    env = {**os.environ, "TORCH_HOME": str(home)}
    done = subprocess.run([sys.executable, str(HERE / "_torchhub_oracle.py"), str(request)],
                          timeout=900, env=env, cwd=tmp, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"plain torch.hub cannot import {case.repo} here: {last}")
    answer: dict[str, Any] = json.loads((out / "oracle.json").read_text())
    for i, load in enumerate(answer["loads"]):
        if "keys" in load:
            load["tensors"] = load_file(out / f"{i}.safetensors")
    return answer


def _nested_policy(case: Case, tmp: Path, hub: FakeHub) -> tuple[str | None, list[str]]:
    if not case.nested:
        return None, []
    for name, _ in case.nested:
        folder = REPOS / name.replace("/", "_")
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
                 if p.is_file() and not p.is_symlink() and ".git" not in p.parts
                 and p.name not in (".commit", ".missing")}
        hub.add_repo(name, files)
    policy = write_policy(tmp / "policy.toml", hub)
    return str(policy), [name for name, _ in case.nested]


@pytest.mark.parametrize("case", CASES, ids=[c.repo for c in CASES])
def test_safehub_matches_torch_hub(case: Case, tmp_path: Path,
                                   isolated_torch_home: Path) -> None:
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    oracle = _oracle(case, tmp_path)
    for name in case.preimport:
        importlib.import_module(name)
    hub = FakeHub("127.0.0.1")
    try:
        policy, nested = _nested_policy(case, tmp_path, hub)
        repo = str(case.folder)
        assert safehub.list(repo, source="local", policy=policy) == oracle["entrypoints"]
        if case.help:
            assert safehub.help(repo, case.help, source="local", policy=policy) == oracle["doc"]
        for (entry, kwargs), want in zip(case.loads, oracle["loads"], strict=True):
            if "error" in want:
                # Plain torch.hub cannot do it here either (it wants the network): not a
                # difference, but say so.
                print(f"{case.repo}:{entry}: torch.hub fails here too: {want['error']}")
                continue
            got = safehub.load(repo, entry, source="local", seed=SEED, policy=policy,
                               trust_nested=nested, **kwargs)
            assert {k: [list(v.shape), str(v.dtype)] for k, v in got.items()} == want["keys"], \
                f"{case.repo}:{entry}: keys, shapes or dtypes differ"
            differ = [k for k, v in want["tensors"].items() if not torch.equal(got[k], v)]
            assert not differ, f"{case.repo}:{entry}: values differ for {differ[:5]}"
    finally:
        hub.close()
