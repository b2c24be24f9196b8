"""One accountant interface over Opacus (RDP, PRV) and dp-accounting (PLD).

A privacy history is a sequence of :class:`GaussianSteps`: ``steps`` applications of the
Poisson-subsampled Gaussian mechanism with sampling rate ``q`` and noise multiplier ``sigma``
(the event ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)`` of dp-accounting).
``compute_epsilon(history, delta, accountant)`` is a pure function of it: the state is the
history (kept by the ledger), the math is the libraries'.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
from dp_accounting import pld

ACCOUNTANTS = ("rdp", "prv", "pld")


@dataclass(frozen=True)
class GaussianSteps:
    """``steps`` Poisson-subsampled Gaussian steps at rate ``sample_rate``, ``noise_multiplier``."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(
                f"noise multiplier must be finite and >= 0, got {self.noise_multiplier}"
            )
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")

    def as_list(self) -> list[float | int]:
        """``[sigma, q, steps]`` for JSON."""
        return [self.noise_multiplier, self.sample_rate, self.steps]

    @classmethod
    def from_list(cls, value: object) -> GaussianSteps:
        """Inverse of :meth:`as_list`, validated (ledger files are input from outside)."""
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"a history entry is [sigma, q, steps], got {value!r}")
        sigma, q, steps = value
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        return cls(float(sigma), float(q), steps)


def check_delta(delta: float) -> float:
    """``delta`` as a float, or a ValueError naming the allowed range (0, 1)."""
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def check_accountant(name: str) -> str:
    """``name`` if it is one of :data:`ACCOUNTANTS`, else a ValueError listing them."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return name


def merged_history(history: Sequence[GaussianSteps]) -> tuple[GaussianSteps, ...]:
    """Adjacent entries with the same (sigma, q) merged: composition only adds steps."""
    out: list[GaussianSteps] = []
    for h in history:
        if h.steps == 0:
            continue
        if out and (out[-1].noise_multiplier, out[-1].sample_rate) == (
            h.noise_multiplier,
            h.sample_rate,
        ):
            out[-1] = GaussianSteps(h.noise_multiplier, h.sample_rate, out[-1].steps + h.steps)
        else:
            out.append(h)
    return tuple(out)


def compute_epsilon(history: Sequence[GaussianSteps], delta: float, accountant: str) -> float:
    """Epsilon of the composed history at ``delta``; ``inf`` if some step had no noise."""
    check_delta(delta)
    check_accountant(accountant)
    merged = merged_history(history)
    if not merged:
        return 0.0
    if any(h.noise_multiplier == 0 for h in merged):
        return math.inf
    return _epsilon_cached(merged, float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(history: tuple[GaussianSteps, ...], delta: float, accountant: str) -> float:
    if accountant == "pld":
        acc = pld.PLDAccountant()
        for h in history:
            inner: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(h.noise_multiplier)
            if h.sample_rate < 1:
                inner = dp_accounting.PoissonSampledDpEvent(h.sample_rate, inner)
            acc.compose(dp_accounting.SelfComposedDpEvent(inner, h.steps))
        return float(acc.get_epsilon(delta))
    # Opacus only where its accountants run: importing it calls logging.basicConfig, which
    # doubles every console line of a process that logs through its own handlers (Flower).
    from opacus.accountants import PRVAccountant, RDPAccountant

    opacus_acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    opacus_acc.history = [(h.noise_multiplier, h.sample_rate, h.steps) for h in history]
    return float(opacus_acc.get_epsilon(delta))
