"""Local training and evaluation loops on in-memory tensors (no DataLoader overhead).

FedProx (Li et al., 2020) adds ``mu/2 * ||w - w_global||^2`` to the local loss; its gradient
``mu * (w - w_global)`` is added to each parameter's gradient directly, which is exact and
cheaper than building the penalty into the autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_ext.data.datasets import ArrayDataset


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one client's local training in one round."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    proximal_mu: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"local epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {self.proximal_mu}")


@dataclass(frozen=True)
class TrainStats:
    """Mean training loss over all seen batches, examples used and optimizer steps."""

    loss: float
    num_examples: int
    steps: int


Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def train_local(
    model: nn.Module, data: ArrayDataset, cfg: TrainConfig, *, forward: Forward | None = None
) -> TrainStats:
    """Run ``cfg.epochs`` epochs of mini-batch SGD on ``data``, in place on ``model``.

    ``forward(model, x)`` replaces ``model(x)`` per batch (ordered dropout trains a random
    width of the model in each batch).
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty partition")
    generator = torch.Generator().manual_seed(cfg.seed)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    anchors = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else []
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    criterion = nn.CrossEntropyLoss()
    model.train()
    total_loss, steps = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x[batch]) if forward is None else forward(model, x[batch])
            loss = criterion(logits, y[batch])
            loss.backward()
            if anchors:
                with torch.no_grad():
                    for p, anchor in zip(model.parameters(), anchors, strict=True):
                        if p.grad is not None:
                            p.grad.add_(p - anchor, alpha=cfg.proximal_mu)
            optimizer.step()
            total_loss += float(loss.detach())
            steps += 1
    return TrainStats(loss=total_loss / steps, num_examples=len(data), steps=steps)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``data``."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty set")
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        xb = torch.from_numpy(data.x[start : start + batch_size])
        yb = torch.from_numpy(data.y[start : start + batch_size])
        logits = model(xb)
        loss_sum += float(criterion(logits, yb))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(data), correct / len(data)


def seed_for(*parts: int) -> int:
    """A 31-bit seed derived from integers (run seed, round, partition...)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0] >> 1)
