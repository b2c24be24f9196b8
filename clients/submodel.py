"""The client side of capacity-scaled sub-models: build the slice the server sent, train it.

The train message says the width, the policy and (rolling) the window's offset; the client
finds the same slice of its own model from the model's graph (:mod:`fl_ext.models.slicing`),
so both sides agree without the server describing shapes. Under ordered dropout (FjORD) each
batch trains a random width up to the sent one through ``torch.func.functional_call`` on
nested leading slices of the sub-model's own parameters (no copy, gradients land in place).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_ext.models.slicing import SlicePlan

WIDTH_KEY = "submodel-width"  # the node's width this round
POLICY_KEY = "submodel-policy"  # static | ordered_dropout | rolling
OFFSET_KEY = "submodel-offset"  # rolling: the window's start, in channels
WIDTHS_KEY = "submodel-widths"  # ordered dropout: the widths a client samples from
POLICIES = ("static", "ordered_dropout", "rolling", "exclude")  # exclude: width 1 only

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]
ForwardFactory = Callable[[int], Forward]  # the round's training seed -> a per-batch forward


@dataclass(frozen=True)
class SubModelTask:
    """What the server asked this client to train, checked."""

    width: float
    policy: str
    offset: int
    widths: tuple[float, ...]  # ordered dropout's choices (<= width are used)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SubModelTask | None:
        """The task in a train message's config (None: the whole model); ValueError if bad."""
        if WIDTH_KEY not in config:
            return None
        width, policy = config[WIDTH_KEY], config.get(POLICY_KEY, "static")
        offset = config.get(OFFSET_KEY, 0)
        if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= 1:
            raise ValueError(f"{WIDTH_KEY} must be a number in (0, 1], got {width!r}")
        if policy not in POLICIES:
            raise ValueError(f"{POLICY_KEY} must be one of {', '.join(POLICIES)}, got {policy!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"{OFFSET_KEY} must be an integer >= 0, got {offset!r}")
        widths: tuple[float, ...] = (float(width),)
        if policy == "ordered_dropout":
            try:
                widths = tuple(sorted({float(w) for w in str(config[WIDTHS_KEY]).split(",")}))
            except (KeyError, ValueError) as err:
                raise ValueError(f"{WIDTHS_KEY} must list widths like '0.25,0.5,1': {err}") from err
            if not widths or any(not (0 < w <= 1) or math.isnan(w) for w in widths):
                raise ValueError(f"{WIDTHS_KEY} must be widths in (0, 1], got {widths}")
        return cls(float(width), str(policy), int(offset), widths)


def check_device_limit(task: SubModelTask, max_width: float | None) -> None:
    """Refuse a width above what this device says it can hold (its ``max-width``)."""
    if max_width is not None and task.width > max_width + 1e-12:
        raise ValueError(
            f"the server asked for width {task.width:g}, above this device's max-width "
            f"{max_width:g} (node config)"
        )


def submodel_for(
    model: nn.Module, input_shape: Sequence[int], task: SubModelTask
) -> tuple[nn.Module, ForwardFactory | None]:
    """The sub-model the task names (weights still to be loaded) and its per-batch forward.

    The forward factory (called with the round's training seed) is None except under ordered
    dropout, where the forward samples a width per batch.
    """
    if task.width >= 1.0 and task.policy != "ordered_dropout":
        return model, None  # the whole model
    plan = SlicePlan.of(model, input_shape)
    sub = plan.indices(task.width, offset=task.offset).submodel(model)
    if task.policy != "ordered_dropout":
        return sub, None
    widths = [w for w in task.widths if w <= task.width + 1e-12]
    if not widths:
        raise ValueError(f"ordered dropout: no width in {task.widths} at or below {task.width:g}")
    indices = {w: plan.indices(w) for w in widths}

    def make_forward(seed: int) -> Forward:
        rng = np.random.default_rng(seed)

        def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
            width = widths[int(rng.integers(len(widths)))]
            if width >= task.width:
                out: torch.Tensor = module(x)
                return out
            tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
            result: torch.Tensor = torch.func.functional_call(
                module, indices[width].views(tensors), (x,)
            )
            return result

        return forward

    return sub, make_forward
