"""Secure aggregation's server-side part: the decoder and the aggregation slot under SecAgg+.

Under secure aggregation the server never sees an update, only a masked vector per client
and, after the unmask phase (run by :class:`strategies.secure_rounds.SecAggRounds`), their
sum. This part fills both slots: as the decoder it parses a masked reply (one ``uint8``
array of exactly the packed size, finite metrics) and keeps the words for the driver; as
the aggregation it returns the decoded weighted mean the driver unmasked, or skips the round
when the driver abandoned it. It plans each round's parameters (threshold, graph degree,
modulus bits that cannot wrap) and reports the protocol's telemetry.

What the server can check under secure aggregation, and what it cannot: it checks every
message's shape, sizes, the keys and shares (authenticated encryption, commitments,
reconstructed keys against their public keys), the client's fl-ext version and model schema,
and the clear metrics; it cannot check an individual update (its norm, its values): clients
clip to ``clip_range`` themselves, so rules that need individual updates (median, Krum,
norm checks, omniscient attacks) are refused at start.
"""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from fl_ext.secagg.encoding import SecAggEncoding
from fl_ext.secagg.graph import default_degree
from fl_ext.secagg.packing import unpack
from fl_ext.secagg.server import ServerSession, threshold_for
from fl_ext.secagg.wire import RoundParams
from fl_ext.validation import Rejection, RejectReason, check_metrics
from strategies.aggregation import Aggregation
from strategies.decoding import Decoder
from strategies.replies import TRAIN_BOUNDS, TrainReply, _single_metrics
from strategies.round import Round
from strategies.secagg_dp import DistributedDP
from strategies.stage import ConfigValue

MASKED_KEY = "masked"
PHASES = ("keys", "shares", "train", "unmask")
GRAPHS = ("plus", "full")


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PhaseTimeouts:
    """Seconds the server waits for each query phase (the train phase uses the run's)."""

    keys: float = 60.0
    shares: float = 60.0
    unmask: float = 60.0

    def __post_init__(self) -> None:
        for name in ("keys", "shares", "unmask"):
            _positive(f"timeouts.{name}", getattr(self, name))


class SecureAggregation(Decoder, Aggregation):
    """SecAgg+ (``graph="plus"``, Bell et al. 2020) or the full graph (Bonawitz et al. 2017).

    ``threshold``: shares needed to reconstruct a secret, as a fraction of the neighbourhood
    (t = ceil(threshold * k)); a neighbourhood tolerates ``k - t`` dropouts. ``degree``:
    neighbours per client under ``plus`` (None: ``default_degree(n)``, of order log n).
    ``clip_range`` / ``levels``: every coordinate clipped to [-clip_range, clip_range] and
    quantized to [-levels, levels] (127: the int8 range). ``max_weight``: the integer weight
    cap (a client's weight is its example count in ``examples_per_weight`` units, at most
    this). ``bits``: the modulus (None: the fewest that cannot wrap; too few is refused).
    ``min_survivors``: the fewest masked inputs a sum may hold (at least the threshold).
    """

    name = "secure_aggregation"
    requires = frozenset()
    needs_fl_ext_client = True

    def __init__(
        self,
        *,
        graph: str = "plus",
        threshold: float = 0.5,
        degree: int | None = None,
        clip_range: float = 0.1,
        levels: int = 127,
        max_weight: int = 1,
        examples_per_weight: int = 1,
        bits: int | None = None,
        min_survivors: int = 2,
        timeouts: PhaseTimeouts | dict[str, float] | None = None,
        seed: int | None = None,
        dp: DistributedDP | None = None,
        size: int | None = None,
        num_rounds: int | None = None,
    ) -> None:
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
            raise ValueError(f"threshold must be a fraction in (0, 1], got {threshold!r}")
        if degree is not None and (
            isinstance(degree, bool) or not isinstance(degree, int) or degree < 1
        ):
            raise ValueError(f"degree must be an integer >= 1 or None, got {degree!r}")
        if graph == "full" and degree is not None:
            raise ValueError("degree applies to graph='plus'; the full graph links every pair")
        for name, value in (
            ("examples_per_weight", examples_per_weight),
            ("min_survivors", min_survivors),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.graph, self.threshold, self.degree = graph, float(threshold), degree
        self.examples_per_weight, self.min_survivors = examples_per_weight, min_survivors
        self.bits = bits
        # validated once here (a too-small bits is refused for the largest cohort at start)
        SecAggEncoding(clip_range=_positive("clip_range", clip_range), levels=levels,
                       max_weight=max_weight, bits=bits or 32, size=1)  # fmt: skip
        self.clip_range, self.levels, self.max_weight = float(clip_range), levels, max_weight
        self.timeouts = (
            timeouts if isinstance(timeouts, PhaseTimeouts) else PhaseTimeouts(**(timeouts or {}))
        )
        self.seed = seed
        self.rounds_abandoned = 0
        self.replaceable = False
        self.dp = dp
        self.size = size
        if dp is not None:
            if max_weight != 1:
                raise ValueError(
                    f"secagg.dp needs max_weight=1 (equal weights; the weight sum is not "
                    f"noised), got {max_weight}"
                )
            if size is None or num_rounds is None:
                raise ValueError("distributed DP needs the model size and num_rounds to plan")
            dp.plan(
                num_rounds=num_rounds, size=size, scale=levels / self.clip_range,
                max_weight=max_weight, min_survivors=min_survivors,
            )  # fmt: skip

    # ------------------------------------------------------------------ planning
    def encoding(self, *, size: int, max_clients: int) -> SecAggEncoding:
        """The round's encoding; refuses a modulus that could wrap, with the numbers."""
        noise = self.dp.noise_bound(max_clients) if self.dp is not None else 0
        return SecAggEncoding.plan(
            clip_range=self.clip_range, levels=self.levels, max_weight=self.max_weight,
            max_clients=max_clients, size=size, bits=self.bits, noise_bound=noise,
        )  # fmt: skip

    def check_start(self, *, num_nodes: int) -> None:
        """Fail at start if the largest possible round could wrap or never reach t."""
        self.encoding(size=self.size or 1, max_clients=num_nodes)
        degree = self.planned_degree(num_nodes)
        t = threshold_for(degree, self.threshold)
        if max(t, self.min_survivors) > num_nodes:
            raise ValueError(
                f"secure aggregation needs {max(t, self.min_survivors)} survivors "
                f"(threshold {t} of {degree} neighbours, min_survivors {self.min_survivors}), "
                f"more than the {num_nodes} nodes"
            )

    def planned_degree(self, n: int) -> int:
        """Neighbours per node (the graph rounds an odd degree up when n is odd)."""
        if self.graph == "full" or n <= 2:
            return max(n - 1, 1)
        degree = min(n - 1, self.degree or default_degree(n))
        return degree + 1 if degree % 2 and n % 2 and degree < n - 1 else degree

    def open_round(self, rnd: Round, nodes: list[int]) -> tuple[ServerSession, SecAggEncoding]:
        """The round's server session over ``nodes`` and the encoding they use."""
        encoding = self.encoding(size=rnd.spec.size, max_clients=max(len(nodes), 1))
        degree = self.planned_degree(len(nodes))
        t = threshold_for(degree, self.threshold)
        params = RoundParams(
            round=rnd.number, nonce=secrets.token_bytes(16), threshold=t,
            bits=encoding.bits, size=encoding.size + 1,
        )  # fmt: skip
        session = ServerSession(
            params=params, nodes=list(nodes),
            degree=None if self.graph == "full" else degree,
            min_survivors=max(t, self.min_survivors),
            graph_seed=None if self.seed is None else self.seed * 1_000_003 + rnd.number,
        )  # fmt: skip
        rnd.secure = {"bits": encoding.bits, "threshold": t, "degree": degree}
        return session, encoding

    def client_config(
        self, encoding: SecAggEncoding, params: RoundParams
    ) -> dict[str, ConfigValue | bytes]:
        """The entries every message of the round carries."""
        return {
            **encoding.config(),
            "secagg-params": params.to_bytes(),
            "secagg-examples-per-weight": self.examples_per_weight,
            **(self.dp.config() if self.dp is not None else {}),
        }

    # ------------------------------------------------------------------ privacy
    def stop_reason(self, server_round: int, nodes: Sequence[int]) -> str | None:
        """The distributed-DP budget cannot pay for a round of the fewest survivors."""
        return self.dp.stop_reason(self.min_survivors) if self.dp is not None else None

    def spent(self, rnd: Round, survivors: int) -> None:
        """Record the noise the unmasked sum carried (a round that unmasked nothing spent none)."""
        if self.dp is not None:
            record = self.dp.record(rnd.number, survivors)
            assert rnd.secure is not None
            rnd.secure["dp_epsilon"] = float(record["client_level_epsilon"])

    # ------------------------------------------------------------------ decoder
    def parse(
        self,
        rnd: Round,
        msg: Message,
        *,
        max_examples: int | None,
        required_metrics: tuple[str, ...],
    ) -> TrainReply | Rejection:
        """A masked reply: one ``uint8`` array of the round's packed size, checked metrics."""
        info = rnd.secure or {}
        size, bits = rnd.spec.size + 1, int(info.get("bits", 0))
        records = msg.content.array_records
        if len(records) != 1:
            return Rejection(RejectReason.MALFORMED, f"expected 1 ArrayRecord, got {len(records)}")
        record = next(iter(records.values()))
        if list(record.keys()) != [MASKED_KEY]:
            return Rejection(
                RejectReason.KEYS_MISMATCH, f"a masked reply holds one array {MASKED_KEY!r}"
            )
        metrics = _single_metrics(msg)
        if isinstance(metrics, Rejection):
            return metrics
        rejection = check_metrics(metrics, required_metrics, TRAIN_BOUNDS)
        if rejection is not None:
            return rejection
        try:
            packed = record[MASKED_KEY].numpy()
            words = unpack(packed, bits, size, np.uint16 if bits <= 16 else np.uint32)
        except (ValueError, TypeError) as err:
            return Rejection(RejectReason.MALFORMED, f"masked vector: {err}")
        return TrainReply(msg.metadata.src_node_id, OrderedDict([(MASKED_KEY, words)]), 1, metrics)

    def to_update(self, rnd: Round, reply: TrainReply, out: torch.Tensor) -> torch.Tensor:
        """No individual update exists: the words wait for the unmask phase."""
        rnd.masked[reply.node_id] = reply.arrays[MASKED_KEY]
        return out.zero_()

    # ------------------------------------------------------------------ aggregation
    def min_inputs(self) -> int:
        return self.min_survivors

    def aggregate(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> torch.Tensor | None:
        """The unmasked weighted mean (None: the round was abandoned, model unchanged)."""
        return rnd.secure_sum

    def describe(self) -> str:
        return f"SecureAggregation({self.graph}, threshold={self.threshold})"

    def metrics(self, rnd: Round) -> dict[str, float]:
        out = {f"secagg_{k}": float(v) for k, v in (rnd.secure or {}).items()}
        out["secagg_rounds_abandoned"] = float(self.rounds_abandoned)
        if self.dp is not None:
            out.update(self.dp.ledger.metrics())
        return out

    def summary(self) -> str:
        dp = (
            ""
            if self.dp is None
            else (
                f", distributed DP (Skellam) epsilon {self.dp.epsilon} delta {self.dp.delta}, "
                f"L2 clip {self.dp.l2_clip}, mu per client {self.dp.mu_client:.4g}"
            )
        )
        return (
            f"secure aggregation: {self.graph} graph, threshold {self.threshold}, clip "
            f"{self.clip_range}, {self.levels} levels, weight cap {self.max_weight}, "
            f"bits {self.bits or 'auto'}{dp}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rounds_abandoned": self.rounds_abandoned}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.rounds_abandoned = int(state.get("rounds_abandoned", 0))
