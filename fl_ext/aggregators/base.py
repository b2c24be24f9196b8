"""What every aggregation rule shares: input checks, the Byzantine budget ``f``, minimum n."""

from __future__ import annotations

import torch

from fl_ext.aggregators.state import AggregatorState


class NotEnoughInputs(ValueError):
    """A rule got fewer updates than it needs for its ``f`` (a config or round problem)."""


def check_f(f: int) -> int:
    """``f`` (number of Byzantine clients tolerated) must be an integer >= 0."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f (Byzantine clients tolerated) must be an integer >= 0, got {f!r}")
    return f


def all_finite(x: torch.Tensor, block: int = 1 << 16) -> bool:
    """``torch.isfinite(x).all()`` by column blocks.

    The whole-tensor version allocates an ``abs`` copy and two boolean masks of the input's
    size (350 MB extra for 50 x 1e6 float32).
    """
    return all(bool(torch.isfinite(x[:, s : s + block]).all()) for s in range(0, x.shape[1], block))


def check_updates(updates: torch.Tensor, weights: torch.Tensor | None = None) -> None:
    """Updates ``[n >= 1, d >= 1]`` floating and finite; weights ``[n]`` finite, >= 0, not all 0."""
    if updates.ndim != 2 or updates.shape[0] < 1 or updates.shape[1] < 1:
        raise ValueError(f"updates must be [n >= 1, d >= 1], got shape {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise ValueError(f"updates must be floating point, got {updates.dtype}")
    if not all_finite(updates):
        raise ValueError("updates contain NaN or Inf; invalid replies must be rejected before")
    if weights is not None:
        n = updates.shape[0]
        if weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
        if (
            not bool(torch.isfinite(weights).all())
            or bool((weights < 0).any())
            or float(weights.sum()) <= 0
        ):
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights.tolist()}")


class Aggregator:
    """A rule ``[n, d] (+ weights [n]) -> [d]``; never modifies its inputs; stateless.

    Subclasses implement :meth:`aggregate` and, when they need more than one input for their
    ``f``, :meth:`min_inputs`. Robust rules ignore client weights (example counts are what
    clients *say*) unless ``uses_weights`` is True for the rule.
    """

    f: int = 0
    uses_weights: bool = False
    needs_reference: bool = False  # True: state.reference must hold the server's own update
    is_plain_mean: bool = False  # FedAvg's weighted mean: a mechanism may take its place

    def min_inputs(self) -> int:
        """Smallest n the rule is defined for (with its ``f``)."""
        return 1

    def requirement(self) -> str:
        """Human-readable form of :meth:`min_inputs` for error messages."""
        return f"n >= {self.min_inputs()}"

    def check_n(self, n: int) -> None:
        """Raise :class:`NotEnoughInputs` if ``n`` updates are too few."""
        if n < self.min_inputs():
            raise NotEnoughInputs(
                f"{type(self).__name__} with f={self.f} needs {self.requirement()} "
                f"(at least {self.min_inputs()} updates), got {n}"
            )

    def __call__(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor | None = None,
        state: AggregatorState | None = None,
    ) -> torch.Tensor:
        check_updates(updates, weights)
        self.check_n(updates.shape[0])
        used = weights if self.uses_weights else None
        return self.aggregate_with_state(
            updates, used, state if state is not None else AggregatorState()
        )

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The rule itself, on checked inputs."""
        raise NotImplementedError

    def aggregate_with_state(
        self, updates: torch.Tensor, weights: torch.Tensor | None, state: AggregatorState
    ) -> torch.Tensor:
        """Stateful rules override this; the others ignore ``state``."""
        return self.aggregate(updates, weights)


class HonestMajorityRule(Aggregator):
    """A rule defined while fewer than half the updates are Byzantine: ``n >= 2f + 1``."""

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_f(f)

    def min_inputs(self) -> int:
        return 2 * self.f + 1

    def requirement(self) -> str:
        return "n >= 2f + 1"
