"""Distributed DP under secure aggregation with the Skellam mechanism (Agarwal et al. 2021).

Each surviving client adds independent ``Skellam(mu_i) = Poisson(mu_i) - Poisson(mu_i)``
integer noise (variance ``2 mu_i``) to its clipped, scaled and stochastically rounded update
before masking. The server only learns the masked sum, and Skellam is closed under summation,
so the sum carries exactly ``Skellam(mu)`` noise per coordinate with ``mu = sum_i mu_i``: one
round is the (central) multi-dimensional Skellam mechanism with parameter ``mu`` on integer
vectors, whatever the split between clients. Everything here is in that integer domain and
``mu`` is always the Poisson mean of the sum (its variance is ``2 mu``).

Accounting is RDP with the bound of Agarwal, Kairouz, Liu, "The Skellam Mechanism for
Differentially Private Federated Learning", NeurIPS 2021 (see :func:`skellam_rdp`), composed
over :data:`RDP_ORDERS` and converted with Opacus' ``get_privacy_spent``. Rounds are accounted
without sampling amplification: a secure-aggregation round is a fixed cohort.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Opacus' RDPAccountant.DEFAULT_ALPHAS (1.1 .. 10.9, 12 .. 63; a test checks it is a prefix),
# spelled out so that importing this module does not import Opacus, plus larger integer
# orders: small epsilons over many rounds are attained at orders above 63.
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100))
    + tuple(float(a) for a in range(12, 64))
    + (64.0, 72.0, 80.0, 96.0, 112.0, 128.0, 160.0, 192.0, 224.0, 256.0)
)


def _check_nonneg(name: str, value: float) -> float:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float, np.floating, np.integer))
        and math.isfinite(value)
        and value >= 0
    ):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


def _check_positive(name: str, value: float) -> float:
    if _check_nonneg(name, value) <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _integer_order_bound(alpha: np.ndarray, mu: float, l1: float, l2: float) -> np.ndarray:
    """The paper's bound at integer orders ``alpha`` (it is only proved for those)."""
    head = alpha * l2**2 / (4 * mu)
    tail = np.minimum(((2 * alpha - 1) * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu))
    return head + tail


def skellam_rdp(orders: Sequence[float], *, mu: float, l1: float, l2: float) -> np.ndarray:
    """RDP of one Skellam mechanism with Poisson mean ``mu``, L1/L2 sensitivities ``l1``/``l2``.

    For integer ``alpha > 1`` (Agarwal, Kairouz, Liu 2021, Thm. 3.5 / Cor. 3.6), with the
    noise variance ``2 mu``::

        eps(alpha) <= alpha l2^2 / (4 mu)
                      + min(((2 alpha - 1) l2^2 + 6 l1) / (16 mu^2), 3 l1 / (4 mu))

    Verified against google-research/federated, ``distributed_dp/accounting_utils.py``,
    ``_skellam_rdp(l1_sens, l2_sens, central_var, scale, order)``::

        rdp = a / (2 * mu) * l2_sens**2
        rdp += min(((2 * a - 1) * s * l2_sens**2 + 6 * l1_sens) / (4 * s**3 * mu**2),
                   3 * l1_sens / (2 * s * mu))

    whose ``mu`` is the variance of the sum in unscaled units (``central_stddev**2``; the query
    draws Poissons of mean ``local_stddev**2 / 2``) and whose sensitivities are unscaled: with
    integer-domain ``D = s * sens`` and variance ``V = s**2 * mu`` it reads
    ``a D2^2 / (2V) + min(((2a - 1) D2^2 + 6 D1) / (4 V^2), 3 D1 / (2V))``, and ``V = 2 mu``
    here gives the bound above. The reference truncates orders to integers (``int(order)``);
    here a fractional order ``n < alpha < n + 1`` gets a bound that holds there:
    ``(alpha - 1) D_alpha`` is convex in ``alpha`` (a cumulant generating function) and 0 at
    ``alpha = 1``, so it is at most the chord between the bounds at ``n`` and ``n + 1``.
    """
    mu = _check_positive("mu", mu)
    l1 = _check_nonneg("l1", l1)
    l2 = _check_nonneg("l2", l2)
    alpha = np.asarray(orders, dtype=np.float64)
    if alpha.ndim != 1 or not np.all(np.isfinite(alpha)) or not np.all(alpha > 1):
        raise ValueError(f"orders must be a 1-d sequence of finite numbers > 1, got {orders!r}")
    lo = np.floor(alpha)
    hi = lo + 1
    frac = alpha - lo
    at_lo = np.where(lo > 1, _integer_order_bound(np.maximum(lo, 2), mu, l1, l2), 0.0)
    at_hi = _integer_order_bound(hi, mu, l1, l2)
    chord = ((1 - frac) * (lo - 1) * at_lo + frac * lo * at_hi) / (alpha - 1)
    return np.where(frac == 0, at_lo, chord)


@dataclass(frozen=True)
class SkellamSteps:
    """``steps`` rounds of the Skellam mechanism on the (securely aggregated) sum.

    ``mu``: Poisson mean per coordinate of the sum's noise (all clients' shares together,
    variance ``2 mu``); ``l1``, ``l2``: integer-domain sensitivities (:func:`sensitivities`).
    """

    mu: float
    l1: float
    l2: float
    steps: int

    def __post_init__(self) -> None:
        _check_positive("mu", self.mu)
        _check_nonneg("l1", self.l1)
        _check_nonneg("l2", self.l2)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")

    def with_steps(self, steps: int) -> SkellamSteps:
        """The same mechanism, ``steps`` times (budget look-ahead)."""
        return SkellamSteps(self.mu, self.l1, self.l2, steps)

    def same_mechanism(self, other: object) -> bool:
        """Whether ``other`` differs from this entry only in its number of steps."""
        return isinstance(other, SkellamSteps) and (self.mu, self.l1, self.l2) == (
            other.mu,
            other.l1,
            other.l2,
        )

    def rdp(self, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
        """RDP of all ``steps`` rounds at ``orders`` (composition adds RDP)."""
        if self.steps == 0:
            return np.zeros(len(orders))
        return self.steps * skellam_rdp(orders, mu=self.mu, l1=self.l1, l2=self.l2)

    def as_list(self) -> list[float | int]:
        """``[mu, l1, l2, steps]`` for JSON."""
        return [self.mu, self.l1, self.l2, self.steps]

    @classmethod
    def from_list(cls, value: object) -> SkellamSteps:
        """Inverse of :meth:`as_list`, validated (ledger files are input from outside)."""
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise ValueError(f"a Skellam history entry is [mu, l1, l2, steps], got {value!r}")
        mu, l1, l2, steps = value
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        for name, v in (("mu", mu), ("l1", l1), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, got {v!r}")
        return cls(float(mu), float(l1), float(l2), steps)


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    """Epsilon at ``delta`` of a composed RDP curve on ``orders`` (Opacus' conversion)."""
    if not (isinstance(delta, (int, float)) and not isinstance(delta, bool) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    rdp = np.asarray(rdp, dtype=np.float64)
    if rdp.shape != (len(orders),):
        raise ValueError(f"rdp must have one value per order ({len(orders)}), got {rdp.shape}")
    if np.any(np.isnan(rdp)) or np.any(rdp < 0):
        raise ValueError("rdp values must be >= 0 (and not NaN)")
    if not np.any(rdp > 0):
        return 0.0  # nothing spent: the conversion would report its own slack as epsilon
    # Opacus only where it runs: importing it calls logging.basicConfig (see accountants.py).
    from opacus.accountants.analysis.rdp import get_privacy_spent

    eps, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=float(delta))
    return max(float(eps), 0.0)


def skellam_epsilon(
    history: Sequence[SkellamSteps], delta: float, *, extra_rdp: np.ndarray | None = None
) -> float:
    """Epsilon at ``delta`` of the composed Skellam ``history``, via RDP.

    ``extra_rdp``: the RDP curve on :data:`RDP_ORDERS` of other mechanisms composed with it
    (the Gaussian rounds of a mixed ledger history).
    """
    rdp = np.zeros(len(RDP_ORDERS))
    for h in history:
        if not isinstance(h, SkellamSteps):
            raise ValueError(f"history entries must be SkellamSteps, got {h!r}")
        rdp = rdp + h.rdp()
    if extra_rdp is not None:
        extra = np.asarray(extra_rdp, dtype=np.float64)
        if extra.shape != rdp.shape:
            raise ValueError(
                f"extra_rdp must have one value per order in RDP_ORDERS ({len(RDP_ORDERS)}), "
                f"got shape {extra.shape}"
            )
        rdp = rdp + extra
    return rdp_to_epsilon(rdp, delta)


def sample_skellam(mu: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of ``Poisson(mu) - Poisson(mu)`` (int64): one client's noise share."""
    mu = _check_nonneg("mu", mu)
    size = _check_int("size", size, 0)
    a = rng.poisson(mu, size).astype(np.int64, copy=False)
    b = rng.poisson(mu, size).astype(np.int64, copy=False)
    return a - b


def skellam_mu_for_epsilon(
    *, epsilon: float, delta: float, rounds: int, l1: float, l2: float
) -> float:
    """The smallest total ``mu`` whose ``rounds`` compositions stay within ``epsilon``.

    Binary search on ``log mu`` (epsilon decreases in ``mu``), to a relative precision of
    1e-9; the returned ``mu`` always satisfies the budget.
    """
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    rounds = _check_int("rounds", rounds, 1)
    l1 = _check_nonneg("l1", l1)
    l2 = _check_nonneg("l2", l2)
    if l1 == 0 and l2 == 0:
        raise ValueError("l1 and l2 are both 0: the sum reveals nothing, any mu > 0 works")
    floor = _epsilon_floor(delta)
    if epsilon <= floor:
        raise ValueError(
            f"epsilon {epsilon:g} is unreachable at delta {delta:g}: the RDP orders up to "
            f"{RDP_ORDERS[-1]:g} certify no epsilon below {floor:.4g} even with infinite noise"
        )

    def fits(mu: float) -> bool:
        return skellam_epsilon([SkellamSteps(mu, l1, l2, rounds)], delta) <= epsilon

    lo = hi = max(l2, 1.0) ** 2
    while not fits(hi):
        lo, hi = hi, hi * 10
        if hi > 1e300:  # pragma: no cover - excluded by the floor check above
            raise ValueError(f"no finite mu reaches epsilon {epsilon:g}")
    while fits(lo):
        lo, hi = lo / 10, lo
        if lo < 1e-300:  # pragma: no cover - epsilon grows without bound as mu -> 0
            return hi
    while hi / lo > 1 + 1e-9:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _epsilon_floor(delta: float) -> float:
    """The epsilon the conversion reports for an RDP curve that is 0+ at every order."""
    tiny = np.full(len(RDP_ORDERS), 1e-300)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": expected here
        warnings.simplefilter("ignore", UserWarning)
        return rdp_to_epsilon(tiny, delta)


class Sensitivities(NamedTuple):
    """Integer-domain sensitivities of one client's contribution: ``(l2, l1)``."""

    l2: float
    l1: float


def sensitivities(*, l2_clip: float, scale: float, dim: int, weight: int = 1) -> Sensitivities:
    """L2 and L1 sensitivities (in that order) of one client's integer contribution.

    The update is clipped to L2 norm ``l2_clip``, multiplied by ``scale`` (levels per unit),
    stochastically rounded to integers and multiplied by the integer ``weight``. Adding or
    removing that client moves the sum by its contribution ``weight * v``. Rounding moves each
    coordinate by less than 1, so ``||v||_2 <= l2_clip * scale + sqrt(dim)`` deterministically:
    the honest worst case, since the sensitivity must hold for every draw of the rounding
    (Kairouz et al. 2021 tighten it with conditional rounding, which is not done here). For L1,
    ``||v||_1 <= sqrt(dim) ||v||_2``, i.e. ``l2_clip * scale * sqrt(dim) + dim``. The integer
    bound ``||v||_1 <= ||v||_2^2`` (the reference's ``rounded_l1_norm_bound``) never helps here:
    this L2 bound is at least ``sqrt(dim)``, where ``sqrt(dim) L2 <= L2^2``.
    """
    l2_clip = _check_nonneg("l2_clip", l2_clip)
    scale = _check_positive("scale", scale)
    dim = _check_int("dim", dim, 1)
    weight = _check_int("weight", weight, 1)
    rounded_l2 = l2_clip * scale + math.sqrt(dim)
    rounded_l1 = l2_clip * scale * math.sqrt(dim) + dim
    return Sensitivities(l2=weight * rounded_l2, l1=weight * rounded_l1)
