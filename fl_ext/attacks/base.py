"""Interface of omniscient attacks."""

from __future__ import annotations

from collections.abc import Callable

import torch


class OmniscientAttack:
    """``attack(honest [h, d], num_byzantine, generator) -> [b, d]``; honest is not modified.

    ``factor`` is the attack's strength parameter when it has one (what :class:`LineSearch`
    tunes); ``with_factor`` returns a copy using another value.
    """

    factor: float | None = None

    def __call__(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if honest.ndim != 2 or honest.shape[0] < 1:
            raise ValueError(f"honest updates must be [h >= 1, d], got {tuple(honest.shape)}")
        if num_byzantine < 0:
            raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine}")
        if num_byzantine == 0:
            return honest.new_empty((0, honest.shape[1]))
        return self.craft(honest, num_byzantine, generator)

    def craft(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Subclasses return the ``[num_byzantine, d]`` Byzantine updates."""
        raise NotImplementedError

    def bind(self, aggregate: Callable[[torch.Tensor], torch.Tensor]) -> OmniscientAttack:
        """Set the aggregation an optimizing attack evaluates (the others ignore it)."""
        return self

    def with_factor(self, factor: float) -> OmniscientAttack:
        """The same attack with strength ``factor``."""
        raise ValueError(f"{type(self).__name__} has no strength factor to tune")


def repeat_row(row: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` copies of ``row`` as a new ``[count, d]`` tensor."""
    return row.unsqueeze(0).repeat(count, 1)
