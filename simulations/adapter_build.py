"""Build LoRA adapters from the ``adapter`` config group: the backbone, the mode, the spec.

``adapter=lora`` loads the backbone file into the model, injects the adapters
(:mod:`fl_ext.models.lora`, peft) and returns the adapted model, whose weights are only the
adapter tensors (:class:`fl_ext.models.adapted.AdaptedModel`): the engine, checkpoints and
registry move only those. Clients get the same spec and the backbone's path and SHA-256 in
every message (``adapter-spec``) and refuse a file with another hash. ``mode=flexlora`` adds
its aggregation (:class:`strategies.lora_aggregation.LoraProductMean`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl_ext.models.adapted import AdaptedModel, load_backbone
from fl_ext.models.lora import LoraSpec
from simulations.group_build import build_group
from strategies.lora_aggregation import LoraProductMean
from strategies.lora_ranks import RANK_KEY, AdapterRanks
from strategies.stage import Stage
from strategies.submodels import Capacity

MODES = ("ffa", "fedavg_ab", "flexlora")
ADAPTER_KEY = "adapter-spec"  # the train/evaluate config entry clients build the adapters from


@dataclass(frozen=True)
class AdapterPlan:
    """What the experiment needs from the adapter group."""

    mode: str
    spec: LoraSpec
    backbone: str
    sha256: str | None  # None until the backbone is loaded: then the file's hash
    ranks: AdapterRanks | None = None  # per-client ranks (adapter.ranks)

    def entry(self) -> dict[str, str]:
        """The config entry every message carries."""
        if self.sha256 is None:
            raise ValueError("the backbone is not loaded yet (no hash to send)")
        return {ADAPTER_KEY: json.dumps(adapter_json(self.spec, self.backbone, self.sha256))}

    def stages(self) -> list[Stage]:
        """FlexLoRA's aggregation (the others average the travelling tensors); the ranks."""
        out: list[Stage] = []
        if self.mode == "flexlora":
            out.append(LoraProductMean(alpha=self.spec.alpha))
        if self.ranks is not None:
            out.append(self.ranks)
        return out


def adapter_json(spec: LoraSpec, backbone: str, sha256: str) -> dict[str, Any]:
    """The spec as the clients read it."""
    return {
        "rank": spec.rank, "alpha": spec.alpha, "train_a": spec.train_a, "seed": spec.seed,
        "targets": list(spec.targets) if spec.targets is not None else None,
        "backbone": backbone, "sha256": sha256,
    }  # fmt: skip


def lora(
    seed: int,
    /,
    *,
    mode: str = "ffa",
    rank: int = 8,
    alpha: float = 16.0,
    targets: list[str] | None = None,
    backbone: str | None = None,
    backbone_sha256: str | None = None,
    ranks: list[int] | None = None,
    assign: str = "tiers",
    shares: list[float] | None = None,
    max_relative_time: float = 2.0,
) -> AdapterPlan:
    """The group's plan, checked (the backbone is loaded in :func:`build_adapter`)."""
    if mode not in MODES:
        raise ValueError(f"adapter.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not backbone:
        raise ValueError(
            "adapter.backbone is required: the path of the backbone's state file "
            "(python -m simulations.lora_backbone makes one)"
        )
    spec = LoraSpec(
        rank=rank,
        alpha=float(alpha),
        targets=tuple(targets) if targets else None,
        train_a=mode != "ffa",
        seed=int(seed),
    )
    stage = None
    if ranks:
        values = sorted({int(r) for r in ranks})
        capacity = Capacity(
            widths=[r / spec.rank for r in values], assign=assign, shares=shares,
            max_relative_time=max_relative_time, seed=int(seed),
        )  # fmt: skip
        stage = AdapterRanks(rank=spec.rank, ranks=values, capacity=capacity)
    return AdapterPlan(mode=mode, spec=spec, backbone=backbone, sha256=backbone_sha256, ranks=stage)


def build_adapter(conf: dict[str, Any], model: nn.Module) -> tuple[nn.Module, AdapterPlan | None]:
    """The adapted model and its plan, or ``(model, None)`` for ``adapter=none``."""
    plan = build_group("adapter", conf, AdapterPlan, int(conf["seed"]))
    if plan is None:
        return model, None
    if (conf.get("submodel") or {}).get("_target_"):
        raise ValueError("adapter=lora and submodel cannot be combined: choose one")
    path = str(Path(plan.backbone).expanduser().resolve())
    plan = replace(plan, backbone=path, sha256=load_backbone(model, path, sha256=plan.sha256))
    return AdaptedModel(model, plan.spec), plan


def client_adapted(model: nn.Module, entry: str, *, rank: object = None) -> nn.Module:
    """A client's model from the ``adapter-spec`` entry: the backbone checked, then adapted.

    ``rank`` (the message's ``adapter-rank``): train the leading ``rank`` ranks, with the scale
    ``alpha rank / R`` (the same ``s`` as every other party); under FFA its frozen A is the
    leading rows of the rank-R A every party draws from the seed.
    """
    try:
        spec_json = json.loads(entry)
        spec = LoraSpec(
            rank=int(spec_json["rank"]),
            alpha=float(spec_json["alpha"]),
            targets=tuple(spec_json["targets"]) if spec_json["targets"] else None,
            train_a=bool(spec_json["train_a"]),
            seed=int(spec_json["seed"]),
        )
        backbone, sha256 = str(spec_json["backbone"]), str(spec_json["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{ADAPTER_KEY} is not a valid adapter spec: {err}") from err
    load_backbone(model, backbone, sha256=sha256)
    if rank is None or rank == spec.rank:
        return AdaptedModel(model, spec)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < spec.rank:
        raise ValueError(f"{RANK_KEY} must be an integer in [1, {spec.rank}), got {rank!r}")
    reference = AdaptedModel(copy.deepcopy(model), spec) if not spec.train_a else None
    low = replace(spec, rank=rank, alpha=spec.alpha * rank / spec.rank)
    adapted = AdaptedModel(model, low)
    if reference is not None:  # FFA: A is not sent; the leading rows of the shared draw
        full = dict(reference.inner.named_parameters())
        with torch.no_grad():
            for name, param in adapted.inner.named_parameters():
                if ".lora_A." in name:
                    param.copy_(full[name][:rank])
    return adapted
