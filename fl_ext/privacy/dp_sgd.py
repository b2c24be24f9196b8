"""Sample-level DP-SGD on one client's data, accounted by the client's own history.

The default ``fused`` mode clips per-sample gradients of Linear/Conv2d networks from one
backward pass (:mod:`fused`), with Poisson sampling and noise as Opacus does them; the Opacus
modes (ghost clipping, hooks, functorch) cover other layers. The accountant state is *our*
history of :class:`GaussianSteps`, which the caller persists across rounds (and restarts), so
two rounds of one epoch spend exactly what one round of two epochs spends. Flower's Opacus
example builds a fresh PrivacyEngine every round, so its epsilon restarts at zero; here a
fresh engine is fine because no figure comes from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl_ext.data.datasets import ArrayDataset
from fl_ext.privacy.accountants import (
    GaussianSteps,
    check_accountant,
    check_delta,
    compute_epsilon,
)
from fl_ext.privacy.calibration import calibrate_noise_multiplier
from fl_ext.privacy.fused import FusedClipper, unsupported_layers
from fl_ext.refusals import DECLINED, BudgetExhausted
from fl_ext.training import TrainConfig, TrainStats

GRAD_SAMPLE_MODES = ("fused", "ghost", "hooks", "functorch")  # fused: ours (fused.py)
__all__ = ["DECLINED", "BudgetExhausted"]  # re-exported from fl_ext.refusals


@dataclass(frozen=True)
class DpSgdConfig:
    """Privacy parameters of a client's DP-SGD; ``noise_multiplier=None`` calibrates."""

    max_grad_norm: float
    delta: float
    accountant: str = "rdp"
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    planned_rounds: int = 1
    grad_sample_mode: str = "fused"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm (C) must be > 0, got {self.max_grad_norm}")
        check_delta(self.delta)
        check_accountant(self.accountant)
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ValueError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier (sigma) must be >= 0, got {self.noise_multiplier}")
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("give noise_multiplier or target_epsilon")
        if self.planned_rounds < 1:
            raise ValueError(f"planned_rounds must be >= 1, got {self.planned_rounds}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"grad_sample_mode {self.grad_sample_mode!r} is not one of "
                f"{', '.join(GRAD_SAMPLE_MODES)}"
            )


def check_model(model: nn.Module, grad_sample_mode: str = "fused") -> None:
    """Raise naming the layers DP-SGD cannot train privately (e.g. BatchNorm: use GroupNorm)."""
    if grad_sample_mode == "fused" and unsupported_layers(model):
        raise ValueError(
            f"grad_sample_mode=fused clips per sample through Linear and Conv2d layers only, not "
            f"{', '.join(unsupported_layers(model))}: choose privacy.grad_sample_mode=ghost, "
            "hooks or functorch (Opacus)"
        )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        details = "; ".join(str(e) for e in errors)
        raise ValueError(
            f"model {type(model).__name__} cannot be trained with DP-SGD: {details}. "
            "Replace those layers (ModuleValidator.fix turns BatchNorm into GroupNorm) in the "
            "model itself so server and clients share the same architecture"
        )


def round_plan(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Poisson sampling rate and steps of one round: q = B/n, ``epochs * ceil(n/B)`` steps."""
    if num_examples < 1:
        raise ValueError("cannot train on an empty partition")
    steps_per_epoch = math.ceil(num_examples / batch_size)
    return 1.0 / steps_per_epoch, epochs * steps_per_epoch


def noise_for(cfg: DpSgdConfig, sample_rate: float, round_steps: int) -> float:
    """The configured sigma, or the one that spends ``target_epsilon`` over the planned rounds."""
    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    assert cfg.target_epsilon is not None
    return calibrate_noise_multiplier(
        target_epsilon=cfg.target_epsilon,
        delta=cfg.delta,
        sample_rate=sample_rate,
        steps=round_steps * cfg.planned_rounds,
        accountant=cfg.accountant,
    )


def train_dp_sgd(
    model: nn.Module,
    data: ArrayDataset,
    *,
    train: TrainConfig,
    dp: DpSgdConfig,
    history: Sequence[GaussianSteps],
    noise_multiplier: float,
) -> tuple[TrainStats, GaussianSteps]:
    """One round of DP-SGD in place on ``model``; returns stats and the round's spend.

    Refuses (:class:`BudgetExhausted`, nothing trained) when the round would take the
    client's epsilon past ``dp.target_epsilon``.
    """
    check_model(model, dp.grad_sample_mode)
    q, steps = round_plan(len(data), train.batch_size, train.epochs)
    entry = GaussianSteps(noise_multiplier, q, steps)
    if dp.target_epsilon is not None:
        after = compute_epsilon([*history, entry], dp.delta, dp.accountant)
        if after > dp.target_epsilon:
            spent = compute_epsilon(history, dp.delta, dp.accountant)
            raise BudgetExhausted(
                f"privacy budget exhausted: epsilon spent {spent:.4g}, this round would reach "
                f"{after:.4g} > target {dp.target_epsilon:g} (delta {dp.delta:g})"
            )
    if dp.grad_sample_mode == "fused":
        stats = _train_fused(model, data, train, dp, entry)
    else:
        stats = _train_opacus(model, data, train, dp, noise_multiplier)
    return stats, entry


def _train_fused(
    model: nn.Module, data: ArrayDataset, train: TrainConfig, dp: DpSgdConfig, entry: GaussianSteps
) -> TrainStats:
    """Poisson-sampled steps with :class:`FusedClipper`; noise and scaling as Opacus does."""
    generator = torch.Generator().manual_seed(train.seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    n = len(data)
    expected = entry.sample_rate * n  # Opacus: divide by the expected batch size
    std = entry.noise_multiplier * dp.max_grad_norm
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=train.lr, momentum=train.momentum)
    clipper = FusedClipper(model, dp.max_grad_norm)
    model.train()
    total = 0.0
    try:
        for _ in range(entry.steps):
            batch = (torch.rand(n, generator=generator) < entry.sample_rate).nonzero().squeeze(1)
            if len(batch):
                total += clipper.backward(x[batch], y[batch])
            else:  # an empty Poisson batch is still one noisy step
                for p in params:
                    p.grad = torch.zeros_like(p)
            with torch.no_grad():
                for p in params:
                    assert p.grad is not None
                    if std > 0:
                        p.grad.add_(torch.randn(p.shape, generator=generator), alpha=std)
                    p.grad.div_(expected)
            optimizer.step()
    finally:
        clipper.close()
    return TrainStats(loss=total / max(entry.steps, 1), num_examples=n, steps=entry.steps)


def _train_opacus(
    model: nn.Module,
    data: ArrayDataset,
    train: TrainConfig,
    dp: DpSgdConfig,
    noise_multiplier: float,
) -> TrainStats:
    """Opacus' make_private with the configured per-sample gradient mode."""
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    dataset = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    loader = DataLoader(dataset, batch_size=train.batch_size, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum)
    engine = PrivacyEngine(accountant="rdp")  # its accountant is unused: the history is ours
    criterion: nn.Module = nn.CrossEntropyLoss()
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=dp.grad_sample_mode,
        criterion=criterion,
    )
    if dp.grad_sample_mode == "ghost":
        module, dp_optimizer, criterion, dp_loader = private
    else:
        module, dp_optimizer, dp_loader = private
    module.train()
    total, done = 0.0, 0
    for _ in range(train.epochs):
        for xb, yb in dp_loader:
            dp_optimizer.zero_grad(set_to_none=True)
            if len(xb) == 0:  # Poisson sampling may draw an empty batch: still one noisy step
                dp_optimizer.step()
                done += 1
                continue
            loss = criterion(module(xb), yb)
            loss.backward()
            dp_optimizer.step()
            total += float(loss.detach())
            done += 1
    close = getattr(module, "_close", None)  # drop Opacus' hooks and per-sample buffers
    if callable(close):
        close()
    return TrainStats(loss=total / max(done, 1), num_examples=len(data), steps=done)
