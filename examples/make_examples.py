"""Regenerate the bundled example model files (committed, so `make demo` needs no network).

    python examples/make_examples.py

- ``models/resnet_block_state_dict.pt``: an ordinary state dict saved with torch.save.
- ``models/poisoned_checkpoint.pt``: the same kind of torch zip checkpoint whose data.pkl
  also calls ``os.system`` while loading (a harmless ``echo``), the way real attacks hide
  in otherwise valid checkpoints.
- ``models/config.pkl``: a plain pickle of configuration values (clean).
- ``hubrepo/tiny_cnn.safetensors``: the weights the example torch.hub repo ships.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

HERE = Path(__file__).parent / "models"


def _block() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU())


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("echo 'safehub demo: this command ran while loading the model'",)


def _poisoned(path: Path) -> None:
    """A torch.save checkpoint whose data.pkl also carries a payload object."""
    state = OrderedDict(_block().state_dict())
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "note": _Payload()}, buffer)
    path.write_bytes(buffer.getvalue())
    with zipfile.ZipFile(path) as z:  # sanity: a normal-looking torch archive
        assert any(n.endswith("data.pkl") for n in z.namelist())


def _hubrepo_weights(path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.chmod(0o644)  # readable by the sandbox's unprivileged user


def main() -> None:
    HERE.mkdir(exist_ok=True)
    _hubrepo_weights(HERE.parent / "hubrepo" / "tiny_cnn.safetensors")
    torch.save(_block().state_dict(), HERE / "resnet_block_state_dict.pt")
    _poisoned(HERE / "poisoned_checkpoint.pt")
    with open(HERE / "config.pkl", "wb") as fh:
        pickle.dump({"lr": 0.1, "layers": [64, 128], "name": "demo"}, fh, protocol=4)


if __name__ == "__main__":
    main()
