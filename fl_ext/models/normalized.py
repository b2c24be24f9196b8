"""A model that normalises its raw input first, so a served model needs no preprocessing."""

from __future__ import annotations

import torch
from torch import nn

from fl_ext.data.normalize import Normalization


class Normalized(nn.Module):
    """``net((x - mean) / std)`` with the federation's per-channel figures as buffers."""

    def __init__(self, net: nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.net = net
        shape = (1, len(normalization.mean), 1, 1)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(normalization.mean).reshape(shape))
        self.register_buffer("std", torch.tensor(normalization.std).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the raw images ``x``."""
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        return out
