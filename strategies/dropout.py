"""Simulated dropouts: a seeded share of each round's sampled clients stops answering.

Mobile clients vanish mid-round (about 20 % in the field). This stage marks, every round,
``round(fraction * sampled)`` of the sampled nodes, chosen from the seed and the round alone,
with the phase from which they stop answering (``simulate-dropout`` in their messages); the
client answers that phase, and every later one, with an error reply, as a crashed or
disconnected client would look to the server. The same seed drops the same clients with or
without secure aggregation, so the two can be compared on equal terms. Simulation only.
"""

from __future__ import annotations

import random

from strategies.round import Round
from strategies.stage import ConfigValue, Stage

DROPOUT_KEY = "simulate-dropout"
PHASES = ("keys", "shares", "train", "unmask")


class SimulatedDropout(Stage):
    """``fraction`` of each round's sampled nodes drop at ``phase`` (see the module doc)."""

    name = "simulated_dropout"

    def __init__(self, *, fraction: float, phase: str = "train", seed: int = 0) -> None:
        if not (isinstance(fraction, int | float) and 0 <= fraction < 1):
            raise ValueError(f"dropout.fraction must be in [0, 1), got {fraction!r}")
        if phase not in PHASES:
            raise ValueError(f"dropout.phase must be one of {PHASES}, got {phase!r}")
        self.fraction, self.phase, self.seed = float(fraction), phase, int(seed)

    def dropped(self, server_round: int, sampled: list[int]) -> set[int]:
        """The nodes of ``sampled`` that drop this round (a pure function of seed and round)."""
        count = round(self.fraction * len(sampled))
        return set(random.Random(f"{self.seed}:{server_round}").sample(sorted(sampled), count))

    def node_entries(self, rnd: Round, node: int) -> dict[str, ConfigValue]:
        if node in self.dropped(rnd.number, list(rnd.log.selected)):
            return {DROPOUT_KEY: self.phase}
        return {}

    def summary(self) -> str:
        return (
            f"simulated dropout: {self.fraction:.0%} of the sampled clients at phase {self.phase}"
        )
