"""The torch device a config asks for, refused by name when it is not there."""

from __future__ import annotations

import torch

from pyimgano.config import ConfigError


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: 'cuda' was requested but torch sees no CUDA device; use 'cpu' or 'auto'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
