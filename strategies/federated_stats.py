"""The federated-statistics phase: one query to every node before training, merged exactly.

Every connected node gets a ``query.fedstats`` message; each answers with the per-channel
moments of its training examples (:mod:`clients.stats`), checked by
:func:`strategies.replies.parse_stats` and merged with Chan's update in float64
(:mod:`fl_ext.stats.moments`). Rules: a client below ``min_count`` examples declines, fewer
than ``min_clients`` usable replies (or fewer than ``min_count`` examples in all) is an error,
never a normalisation from too little data. With ``noise_multiplier > 0`` the server releases
the moments through the Gaussian mechanism and records the release in the privacy ledger
for every client whose data it used, before anything is published.

Secure aggregation is not used here yet: under ``secagg`` the phase refuses to start (the
moments would travel in the clear; ``simulations.build.build_statistics``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fl_ext.data.normalize import Normalization
from fl_ext.privacy.accountants import GaussianSteps
from fl_ext.stats import GaussianMomentsNoise, Moments, merge_all
from strategies.exchange import exchange
from strategies.replies import StatsReply, parse_stats
from strategies.wire import record_wire_bytes

MESSAGE_TYPE = "query.fedstats"
RecordSpend = Callable[[dict[str, GaussianSteps]], None]


@dataclass
class StatsResult:
    """What the phase found: the released moments and who contributed."""

    moments: Moments
    noise_multiplier: float
    clients: int
    examples: int
    data_versions: dict[int, tuple[str, int]]  # node -> (partition SHA-256, examples)
    declined: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0

    def normalization(self) -> Normalization:
        """The per-channel (mean, std) every client and the server normalise with."""
        return Normalization.of(self.moments.mean.tolist(), self.moments.std().tolist())

    def to_json(self) -> dict[str, Any]:
        """The artifact logged with the run and the registered model."""
        norm = self.normalization()
        return {
            "format": "fl-ext-federated-stats/1",
            "moments": self.moments.to_json(),
            "mean": list(norm.mean),
            "std": list(norm.std),
            "variance": self.moments.variance().tolist(),
            "noise_multiplier": self.noise_multiplier,
            "clients": self.clients,
            "examples": self.examples,
            "declined": {str(k): v for k, v in self.declined.items()},
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "data_versions": {str(k): list(v) for k, v in self.data_versions.items()},
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "seconds": self.seconds,
        }


class FederatedStatistics:
    """The phase's settings; :meth:`run` queries the nodes and merges their replies."""

    def __init__(
        self,
        *,
        min_count: int = 20,
        min_clients: int = 2,
        noise_multiplier: float = 0.0,
        value_range: tuple[float, float] = (0.0, 1.0),
        timeout_s: float = 120.0,
        seed: int = 0,
    ) -> None:
        for name, value, low in (("min_count", min_count, 1), ("min_clients", min_clients, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"preprocessing.{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(noise_multiplier, int | float) and noise_multiplier >= 0):
            raise ValueError(
                f"preprocessing.noise_multiplier must be >= 0 (0: exact), got {noise_multiplier!r}"
            )
        lo, hi = (float(v) for v in value_range)
        if not lo < hi:
            raise ValueError(
                f"preprocessing.value_range must be [lo, hi] with lo < hi: {value_range}"
            )
        if not timeout_s > 0:
            raise ValueError(f"preprocessing.timeout_s must be > 0, got {timeout_s}")
        self.min_count, self.min_clients = min_count, min_clients
        self.noise_multiplier = float(noise_multiplier)
        self.value_range = (lo, hi)
        self.timeout_s = float(timeout_s)
        self.seed = int(seed)

    def run(
        self,
        grid: Grid,
        nodes: list[int],
        config: ConfigRecord,
        *,
        input_shape: tuple[int, ...],
        record_spend: RecordSpend | None = None,
    ) -> StatsResult:
        """Query ``nodes``, check and merge; RuntimeError when the result would be unfounded."""
        channels, pixels = int(input_shape[0]), int(np.prod(input_shape[1:]))
        if self.noise_multiplier > 0 and record_spend is None:
            raise ValueError("noisy statistics need a privacy ledger to record the release")
        content = ConfigRecord({**dict(config), "stats-min-count": self.min_count})
        messages = [
            Message(RecordDict({"config": content}), dst_node_id=n, message_type=MESSAGE_TYPE)
            for n in nodes
        ]
        started = time.monotonic()
        got = exchange(grid, messages, timeout=self.timeout_s)
        usable: list[StatsReply] = []
        declined: dict[int, str] = {}
        rejected: dict[int, str] = {}
        for reply in got.replies:
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                declined[node] = str(reply.error.reason)
                continue
            parsed = parse_stats(
                reply, channels=channels, pixels=pixels, min_count=self.min_count,
                value_range=self.value_range,
            )  # fmt: skip
            if isinstance(parsed, StatsReply):
                usable.append(parsed)
            else:
                rejected[node] = str(parsed)
                log(WARNING, "\t> statistics of node %d rejected: %s", node, parsed)
        examples = sum(r.num_examples for r in usable)
        if len(usable) < self.min_clients or examples < self.min_count:
            raise RuntimeError(
                f"federated statistics: {len(usable)} usable replies with {examples} examples "
                f"(need >= {self.min_clients} replies, >= {self.min_count} examples); "
                f"declined {len(declined)}, rejected {len(rejected)}, "
                f"unanswered {got.left_in_flight + got.not_pushed}"
            )
        moments = merge_all([r.moments for r in usable])
        if self.noise_multiplier > 0:
            assert record_spend is not None
            keys = [r.client_key for r in usable]
            if any(k is None for k in keys):
                raise RuntimeError("noisy statistics: a reply names no client (dp-client)")
            record_spend({str(k): GaussianSteps(self.noise_multiplier, 1.0, 1) for k in keys})
            noise = GaussianMomentsNoise(
                noise_multiplier=self.noise_multiplier, value_range=self.value_range, pixels=pixels
            )
            moments = noise.apply(moments, np.random.default_rng([self.seed, 0x57A7]))
        result = StatsResult(
            moments=moments,
            noise_multiplier=self.noise_multiplier,
            clients=len(usable),
            examples=examples,
            data_versions={r.node_id: (r.partition_hash, r.partition_size) for r in usable},
            declined=declined,
            rejected=rejected,
            bytes_down=sum(record_wire_bytes(m.content) for m in messages),
            bytes_up=sum(record_wire_bytes(m.content) for m in got.replies if m.has_content()),
            seconds=time.monotonic() - started,
        )
        norm = result.normalization()
        log(
            INFO,
            "Federated statistics from %d clients (%d examples%s): mean %s, std %s (%.2f s, "
            "%d B up)",
            result.clients, examples,
            f", noise multiplier {self.noise_multiplier:g}" if self.noise_multiplier else "",
            [round(m, 4) for m in norm.mean], [round(s, 4) for s in norm.std], result.seconds,
            result.bytes_up,
        )  # fmt: skip
        return result

    def summary(self) -> str:
        """One line for the start-up summary."""
        noise = f", noise {self.noise_multiplier:g}" if self.noise_multiplier else ", exact"
        return (
            f"federated statistics: min count {self.min_count}, "
            f"min clients {self.min_clients}{noise}"
        )
