"""An MLP and a small CNN, sized from the dataset's input shape and class count.

No BatchNorm: its running statistics are not trainable parameters, average badly across
non-IID clients and are refused by Opacus, which later issues plug in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """Base class of the models a spec may name (the allowlist for client-side building)."""

    def __init__(self, *, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) positive, got {tuple(input_shape)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)


class MLP(ClassifierNet):
    """Flatten, then fully connected layers with ReLU."""

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (200, 200),
    ) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {list(hidden)}")
        widths = [math.prod(self.input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], self.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class SmallCNN(ClassifierNet):
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks, then two linear layers."""

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
    ) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes)
        if len(channels) < 1 or any(c < 1 for c in channels) or hidden < 1:
            raise ValueError(f"channels and hidden must be >= 1, got {list(channels)}, {hidden}")
        c_in, height, width = self.input_shape
        blocks: list[nn.Module] = []
        for c_out in channels:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, height, width = c_out, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(
                f"input {self.input_shape} is too small for {len(channels)} pooling blocks"
            )
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out
