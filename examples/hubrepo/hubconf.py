"""An ordinary torch.hub repository: a tiny CNN whose weights ship with the repo."""

dependencies = ["torch"]

import os

import torch

HERE = os.path.dirname(__file__)


def tiny_cnn(num_classes: int = 10) -> torch.nn.Module:
    """A two-layer CNN; weights from tiny_cnn.safetensors when num_classes is 10."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, num_classes))
    if num_classes == 10:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(os.path.join(HERE, "tiny_cnn.safetensors")))
    return model
