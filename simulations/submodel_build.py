"""Build capacity-scaled sub-models from the ``submodel`` config group (checked at start).

``submodel=heterofl|fjord|fedrolex`` picks the policy (static, ordered dropout, rolling);
the group's keys are :func:`submodels`' keyword arguments. What cannot work with slices is
refused here with the reason: DP-SGD (Opacus would not see FjORD's functional forwards and
the sample-level accounting of a slice is untested), a downlink codec (it encodes the
whole global model), error feedback under rolling windows (a residual would land on other
channels next round). Secure aggregation, client-level DP and FedBuff are refused by the
engine's requirement check (they do not aggregate per coordinate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from fl_ext.models.slicing import SlicePlan
from simulations.group_build import build_group
from strategies.compression import Compression
from strategies.privacy import SampleLevelDP
from strategies.stragglers import RoundPolicy, StragglerPolicy
from strategies.submodels import Capacity, SubModels


def submodels(
    model: nn.Module,
    input_shape: Sequence[int],
    seed: int,
    /,
    *,
    policy: str = "static",
    widths: Sequence[float] = (0.25, 0.5, 1.0),
    assign: str = "tiers",
    shares: Sequence[float] | None = None,
    max_relative_time: float = 2.0,
) -> SubModels:
    """The stage: the model's slice plan and each node's capacity."""
    capacity = Capacity(
        widths=widths,
        assign=assign,
        shares=shares,
        max_relative_time=max_relative_time,
        seed=seed,
    )
    return SubModels(plan=SlicePlan.of(model, input_shape), capacity=capacity, policy=policy)


def build_submodels(
    conf: dict[str, Any],
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    compression: Compression | None,
    stragglers: RoundPolicy | None,
    privacy: object | None,
) -> SubModels | None:
    """What ``submodel._target_`` builds (None for ``submodel=none``); ValueError if it cannot."""
    stage = build_group("submodel", conf, SubModels, model, input_shape, int(conf["seed"]))
    if stage is None:
        return None
    if isinstance(privacy, SampleLevelDP):
        raise ValueError(
            "submodel with privacy=dp_sgd is not supported: Opacus does not see ordered "
            "dropout's per-batch widths; use privacy=none (or client-level DP without submodel)"
        )
    if compression is not None and compression.downlink is not None:
        raise ValueError(
            "submodel sends each node its slice as float32: drop codec.downlink "
            f"({compression.downlink!r}); uplink codecs work on the slices"
        )
    if stage.policy == "rolling" and compression is not None and compression.error_feedback:
        raise ValueError(
            "submodel=fedrolex rolls each node's channels every round, so an error-feedback "
            "residual would be added to other channels: set codec.error_feedback=false"
        )
    if stage.capacity.assign == "network":
        if not isinstance(stragglers, StragglerPolicy):
            raise ValueError(
                "submodel.assign=network reads each device's compute speed from the simulated "
                "network: add network=mixed|mobile, or use assign=tiers|reported"
            )
        stage.capacity.network = stragglers.network
    return stage
