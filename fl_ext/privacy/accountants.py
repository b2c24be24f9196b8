"""One accountant interface over Opacus (RDP, PRV) and dp-accounting (PLD).

A privacy history is a sequence of :class:`GaussianSteps`: ``steps`` applications of the
Poisson-subsampled Gaussian mechanism with sampling rate ``q`` and noise multiplier ``sigma``
(the event ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)`` of dp-accounting).
``compute_epsilon(history, delta, accountant)`` is a pure function of it: the state is the
history (kept by the ledger), the math is the libraries'.

A client-level history may also hold :class:`~fl_ext.privacy.skellam.SkellamSteps` (the
distributed Skellam mechanism under secure aggregation). PRV and PLD have no Skellam event, so
a history with one is composed by RDP whatever the accountant (:func:`composed_by` says which
was used).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting import pld

from fl_ext.privacy.skellam import RDP_ORDERS, SkellamSteps, skellam_epsilon

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

    def with_steps(self, steps: int) -> GaussianSteps:
        """The same mechanism, ``steps`` times (budget look-ahead)."""
        return GaussianSteps(self.noise_multiplier, self.sample_rate, steps)

    def same_mechanism(self, other: object) -> bool:
        """Whether ``other`` differs from this entry only in its number of steps."""
        return isinstance(other, GaussianSteps) and (
            self.noise_multiplier,
            self.sample_rate,
        ) == (other.noise_multiplier, other.sample_rate)

    @classmethod
    def from_list(cls, value: object) -> GaussianSteps:
        """Inverse of :meth:`as_list`, validated (ledger files are input from outside)."""
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"a history entry is [sigma, q, steps], got {value!r}")
        sigma, q, steps = value
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        return cls(float(sigma), float(q), steps)


HistoryEntry = GaussianSteps | SkellamSteps


def entry_to_json(entry: HistoryEntry) -> list[float | int] | dict[str, list[float | int]]:
    """One history entry for JSON, in a form old ledger files already have for Gaussian ones.

    Gaussian entries stay ``[sigma, q, steps]`` (the original format); Skellam ones are tagged
    ``{"skellam": [mu, l1, l2, steps]}``, so files without them read as before.
    """
    if isinstance(entry, SkellamSteps):
        return {"skellam": entry.as_list()}
    return entry.as_list()


def entry_from_json(value: object) -> HistoryEntry:
    """Inverse of :func:`entry_to_json`, validated."""
    if isinstance(value, dict):
        if set(value) != {"skellam"}:
            raise ValueError(f'a tagged history entry is {{"skellam": [...]}}, got {value!r}')
        return SkellamSteps.from_list(value["skellam"])
    return GaussianSteps.from_list(value)


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


def merged_history(history: Sequence[HistoryEntry]) -> tuple[HistoryEntry, ...]:
    """Adjacent entries of the same mechanism merged: composition only adds steps."""
    out: list[HistoryEntry] = []
    for h in history:
        if h.steps == 0:
            continue
        if out and out[-1].same_mechanism(h):
            out[-1] = out[-1].with_steps(out[-1].steps + h.steps)
        else:
            out.append(h)
    return tuple(out)


def composed_by(history: Sequence[HistoryEntry], accountant: str) -> str:
    """The accountant that :func:`compute_epsilon` really uses for ``history``."""
    skellam = any(isinstance(h, SkellamSteps) for h in merged_history(history))
    return "rdp" if skellam else accountant


def compute_epsilon(history: Sequence[HistoryEntry], delta: float, accountant: str) -> float:
    """Epsilon of the composed history at ``delta``; ``inf`` if some step had no noise.

    A history with a :class:`SkellamSteps` entry is composed by RDP for every ``accountant``
    (PRV and PLD fall back to RDP): Gaussian entries by Opacus' ``compute_rdp``, Skellam ones
    by :func:`~fl_ext.privacy.skellam.skellam_rdp`, summed on
    :data:`~fl_ext.privacy.skellam.RDP_ORDERS` and converted once.
    """
    check_delta(delta)
    check_accountant(accountant)
    merged = merged_history(history)
    if not merged:
        return 0.0
    if any(isinstance(h, GaussianSteps) and h.noise_multiplier == 0 for h in merged):
        return math.inf
    if any(isinstance(h, SkellamSteps) for h in merged):
        return _mixed_epsilon_cached(merged, float(delta))
    return _epsilon_cached(merged, float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _mixed_epsilon_cached(history: tuple[HistoryEntry, ...], delta: float) -> float:
    from opacus.accountants.analysis.rdp import compute_rdp

    gaussian = np.zeros(len(RDP_ORDERS))
    for h in history:
        if isinstance(h, GaussianSteps):
            gaussian = gaussian + np.asarray(
                compute_rdp(
                    q=h.sample_rate,
                    noise_multiplier=h.noise_multiplier,
                    steps=h.steps,
                    orders=list(RDP_ORDERS),
                ),
                dtype=np.float64,
            )
    skellam = [h for h in history if isinstance(h, SkellamSteps)]
    return skellam_epsilon(skellam, delta, extra_rdp=gaussian)


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
