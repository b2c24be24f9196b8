"""Simulated device and network heterogeneity and a virtual clock (no real sleeping).

Each node draws a profile once (seeded by run seed and node id): compute speed factor, uplink
and downlink bandwidth, latency, probability of being online in a round, probability of
dropping out of a round it was selected for. A node's round time is
``compute_s * speed + bytes_down / downlink + bytes_up / uplink + 2 * latency`` with the real
bytes of its messages (so codecs matter). Named profiles:

* ``ideal``: every node fast, always online, never drops;
* ``mobile``: phones on cellular links (bandwidth log-normal around 2 Mbit/s up, 10 down);
* ``mixed``: 30 % Wi-Fi, 40 % 4G, 30 % slow links with the slowest devices.

Availability may follow a diurnal cycle (``diurnal=True``): the online probability is
scaled by ``0.5 + 0.5 sin(2 pi (round / period + phase))`` with a per-node phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROFILES = ("ideal", "mobile", "mixed")


@dataclass(frozen=True)
class NodeProfile:
    """One node's simulated device and link."""

    speed: float  # compute time multiplier (1 = the machine running the simulation)
    up_mbps: float
    down_mbps: float
    latency_s: float
    online: float  # probability of being connected in a round
    dropout: float  # probability of failing a round it was selected for
    phase: float = 0.0  # diurnal phase in [0, 1)


def _draw(profile: str, rng: np.random.Generator) -> NodeProfile:
    if profile == "ideal":
        return NodeProfile(1.0, math.inf, math.inf, 0.0, 1.0, 0.0, float(rng.random()))
    if profile == "mobile":
        return NodeProfile(
            speed=float(rng.uniform(1.0, 4.0)),
            up_mbps=float(rng.lognormal(math.log(2.0), 0.8)),
            down_mbps=float(rng.lognormal(math.log(10.0), 0.8)),
            latency_s=float(rng.uniform(0.05, 0.3)),
            online=0.8,
            dropout=0.1,
            phase=float(rng.random()),
        )
    tier = rng.choice(3, p=[0.3, 0.4, 0.3])
    speed, up, down, lat, online, drop = [
        ((1.0, 1.5), (20, 50), (50, 100), (0.01, 0.03), 0.95, 0.02),
        ((1.5, 3.0), (2, 10), (10, 40), (0.05, 0.1), 0.85, 0.05),
        ((3.0, 8.0), (0.2, 1.0), (1, 3), (0.1, 0.3), 0.7, 0.15),
    ][int(tier)]
    return NodeProfile(
        speed=float(rng.uniform(*speed)),
        up_mbps=float(rng.uniform(*up)),
        down_mbps=float(rng.uniform(*down)),
        latency_s=float(rng.uniform(*lat)),
        online=online,
        dropout=drop,
        phase=float(rng.random()),
    )


class SimulatedNetwork:
    """Profiles, availability, dropouts and round times of simulated nodes (all seeded)."""

    def __init__(
        self, *, profile: str, seed: int = 0, diurnal: bool = False, period_rounds: int = 24
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"network profile {profile!r} is not one of {', '.join(PROFILES)}")
        if period_rounds < 1:
            raise ValueError(f"period_rounds must be >= 1, got {period_rounds}")
        self.profile, self.seed = profile, int(seed)
        self.diurnal, self.period = bool(diurnal), int(period_rounds)
        self._nodes: dict[int, NodeProfile] = {}

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng(
            [self.seed, *[(k & 0xFFFFFFFF) for k in keys], *[k >> 32 for k in keys]]
        )

    def node(self, node_id: int) -> NodeProfile:
        if node_id not in self._nodes:
            self._nodes[node_id] = _draw(self.profile, self._rng(node_id))
        return self._nodes[node_id]

    def online(self, node_id: int, server_round: int) -> bool:
        """Whether the node is connected this round (seeded per node and round)."""
        p = self.node(node_id)
        prob = p.online
        if self.diurnal:
            prob *= 0.5 + 0.5 * math.sin(2 * math.pi * (server_round / self.period + p.phase))
        return bool(self._rng(node_id, server_round, 1).random() < prob)

    def drops(self, node_id: int, server_round: int) -> bool:
        """Whether the node fails the round it was selected for."""
        return bool(self._rng(node_id, server_round, 2).random() < self.node(node_id).dropout)

    def round_time(self, node_id: int, compute_s: float, bytes_down: int, bytes_up: int) -> float:
        """Simulated seconds from the server's send to the node's reply arriving."""
        p = self.node(node_id)
        return (
            max(compute_s, 0.0) * p.speed
            + bytes_down * 8 / (p.down_mbps * 1e6)
            + bytes_up * 8 / (p.up_mbps * 1e6)
            + 2 * p.latency_s
        )
