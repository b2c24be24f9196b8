"""How the engine is put together from its parts: slots, distinct names, the default rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from fl_ext.aggregators import Aggregator, RobustAggregation, WeightedMean
from strategies.stage import Stage

S = TypeVar("S", bound=Stage)
T = TypeVar("T")


def first(values: Iterable[T | None]) -> T | None:
    """The first value that is not None (the first stage with something to say)."""
    return next((v for v in values if v is not None), None)


def as_is(needed: int, available: int) -> int:
    """No over-selection: ask the nodes a round needs."""
    return needed


def slot(kind: type[S], parts: list[Stage], default: S) -> S:
    """The one part that fills a slot, else the default; two claimants are a config error."""
    claims = [p for p in parts if isinstance(p, kind)]
    if len(claims) > 1:
        names = " and ".join(type(p).__name__ for p in claims)
        raise ValueError(f"{names} both take the {kind.name} slot: choose one")
    if not claims:
        return default
    if not getattr(default, "replaceable", True):
        raise ValueError(
            f"{type(claims[0]).__name__} takes the {kind.name} slot; it cannot be combined "
            f"with {default.describe_requirement()} (use aggregator=mean, preagg=[])"
        )
    return claims[0]


def distinct(parts: Iterable[Stage | None]) -> list[Stage]:
    """Each part once (one object may fill two slots), names unique (checkpoint keys)."""
    out: list[Stage] = []
    for part in parts:
        if part is not None and all(part is not p for p in out):
            if any(part.name == p.name for p in out):
                raise ValueError(f"two stages are named {part.name!r}: checkpoints need one each")
            out.append(part)
    return out


def as_pipeline(aggregation: RobustAggregation | Aggregator | None) -> RobustAggregation:
    """FedAvg's weighted mean by default; a bare rule becomes a pipeline without pre-steps."""
    if aggregation is None:
        aggregation = WeightedMean()
    if isinstance(aggregation, Aggregator):
        aggregation = RobustAggregation(rule=aggregation)
    if not isinstance(aggregation, RobustAggregation):
        raise ValueError(
            f"aggregation must be an Aggregator or RobustAggregation, got {aggregation!r}"
        )
    return aggregation
