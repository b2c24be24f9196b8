"""Deadlines, over-selection, partial aggregation and the fallback, on a virtual or a real clock.

Per round: the selector is asked for ``ceil(over_selection * K)`` nodes (K = what the round
needs); each reply gets its simulated arrival time from :class:`SimulatedNetwork` (reported
compute time x speed + the real bytes over the node's links + latency); nodes that drop this
round never answer. The round closes at the K-th arrival or at the deadline (fixed
``deadline_s``, or the ``deadline_percentile`` of past arrival times), whichever is first;
later replies are *late* and not used. If at least ``partial_fraction`` of K arrived the round
aggregates them (partial aggregation); if more than ``fallback_fraction`` of the asked nodes
dropped or were late, the round is abandoned: the model is kept, an alert is logged, training
goes on. The simulated time of each round and the running total are reported, so time to
accuracy is in simulated seconds.

:class:`MeasuredStragglers` applies the same rules to measured wall times on a real
deployment (or a simulation that should not model devices): the train exchange stops pulling
at the K-th reply or the deadline (adaptive percentile of past reply times, else the round
timeout); nodes whose messages are still in flight are *late* and stay busy (not selected)
until their reply is drained or the round timeout has passed since it was sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message

from fl_ext.selection.network import SimulatedNetwork
from strategies.replies import reported_metrics
from strategies.round import Round
from strategies.stage import Stage

_HISTORY = 1000  # past arrival times kept for the adaptive deadline


@dataclass
class ClockRound:
    """What the clock decided for one round."""

    kept: list[Message] = field(default_factory=list)
    dropped: int = 0
    late: int = 0
    sim_round_s: float = 0.0
    straggler_index: float = 1.0
    fallback: str | None = None
    durations: dict[int, float] = field(default_factory=dict)  # arrival time per answering node
    arrived: list[Message] = field(default_factory=list)  # reached the server (also late ones)
    simulated: bool = True  # times are simulated seconds (virtual clock), else measured
    completed: int = 0  # updates kept for aggregation (``kept`` also passes error replies on)


class RoundPolicy(Stage):
    """Over-selection, deadline, partial aggregation and fallback on arrival times (shared).

    The clock: the driver asks it how long to wait (``exchange_limits``), the engine which
    replies count (``close``); as a stage it filters nodes that are offline this round.
    """

    name = "stragglers"

    def __init__(
        self,
        *,
        over_selection: float = 1.3,
        deadline_s: float | None = None,
        deadline_percentile: float | None = 90.0,
        partial_fraction: float = 0.8,
        fallback_fraction: float = 0.5,
    ) -> None:
        if not over_selection >= 1:
            raise ValueError(f"over_selection must be >= 1, got {over_selection}")
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 or null, got {deadline_s}")
        if deadline_percentile is not None and not 0 < deadline_percentile <= 100:
            raise ValueError(f"deadline_percentile must be in (0, 100], got {deadline_percentile}")
        for name, value in (
            ("partial_fraction", partial_fraction),
            ("fallback_fraction", fallback_fraction),
        ):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        self.over_selection = float(over_selection)
        self.deadline_s, self.deadline_percentile = deadline_s, deadline_percentile
        self.partial_fraction, self.fallback_fraction = (
            float(partial_fraction),
            float(fallback_fraction),
        )
        self.history: list[float] = []  # past arrival times, for the adaptive deadline
        self.sim_time_s = 0.0

    simulated = True  # the clock is virtual (simulated seconds), not measured

    def online(self, node_id: int, server_round: int) -> bool:
        """Whether a node may be selected this round (simulated availability)."""
        return True

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        return [n for n in nodes if self.online(n, rnd.number)]

    def metrics(self, rnd: Round) -> dict[str, float]:
        return {"sim_time_s": self.sim_time_s} if self.simulated else {}

    def asked(self, needed: int, available: int) -> int:
        """How many nodes to select so that ``needed`` replies arrive despite dropouts."""
        return min(available, math.ceil(self.over_selection * needed))

    def deadline(self) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        if self.deadline_percentile is None or len(self.history) < 10:
            return math.inf
        return float(np.percentile(self.history, self.deadline_percentile))

    def exchange_limits(self, needed: int, timeout: float) -> tuple[int | None, float]:
        """``(stop after this many replies, wait at most)`` for the train exchange."""
        return None, timeout  # the virtual clock decides afterwards: collect every reply

    def close(self, rnd: Round) -> ClockRound:
        """Which of ``rnd.replies`` count this round (see the subclasses)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The clock and the arrival history (the network's draws are keyed by node and round)."""
        return {"history": list(self.history), "sim_time_s": self.sim_time_s}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.history = [float(t) for t in state["history"]][-_HISTORY:]
        self.sim_time_s = float(state["sim_time_s"])

    def decide(
        self,
        arrivals: list[tuple[float, Message]],
        out: ClockRound,
        *,
        needed: int,
        asked: int,
        limit: float,
        unfinished: int = 0,
    ) -> ClockRound:
        """Keep the first ``needed`` on-time arrivals; partial aggregation or the fallback.

        ``unfinished``: nodes still working when the round closed that count as failed
        (measured clock, deadline reached before enough replies). Error replies (a crashed
        or declining client) take no place among the ``needed``: they count as failed and
        are always passed on, so the strategy still sees why each node failed.
        """
        errors = [m for _, m in arrivals if m.has_error()]
        arrivals = [(t, m) for t, m in arrivals if not m.has_error()]
        arrivals.sort(key=lambda a: a[0])
        times = [t for t, _ in arrivals]
        self.history = (self.history + times)[-_HISTORY:]  # bounded: cost does not grow with rounds
        on_time = [(t, m) for t, m in arrivals if t <= limit]
        out.late += len(arrivals) - len(on_time)
        kept = on_time[:needed]
        out.late += len(on_time) - len(kept)  # beyond the K first: not waited for
        out.kept = [m for _, m in kept]
        if kept and len(kept) >= needed:
            out.sim_round_s = kept[-1][0]
        else:
            out.sim_round_s = limit if math.isfinite(limit) else (times[-1] if times else 0.0)
        if times:
            out.straggler_index = float(np.percentile(times, 99) / max(np.median(times), 1e-12))
        failed = out.dropped + len(errors) + (len(arrivals) - len(on_time)) + unfinished
        if failed > self.fallback_fraction * asked:
            out.fallback = (
                f"{failed} of {asked} selected nodes dropped or missed the deadline "
                f"({limit:.2f} s): global model kept"
            )
            out.kept = []
        elif len(kept) < math.ceil(self.partial_fraction * needed):
            out.fallback = (
                f"only {len(kept)} of the {needed} needed updates arrived by {limit:.2f} s "
                f"(partial aggregation needs {self.partial_fraction:.0%}): global model kept"
            )
            out.kept = []
        out.completed = len(out.kept)
        out.kept += errors
        return out


def compute_seconds(
    msg: Message, epochs: int, seconds_per_example: float | None, *, unknown: float = 0.0
) -> float:
    """A reply's compute time on the simulated clock, shared by rounds and FedBuff's jobs.

    Modeled as examples x epochs x ``seconds_per_example`` (reproducible on any machine), or,
    with ``seconds_per_example`` None, the client's reported ``compute_time_s`` (``unknown``
    when it is missing or not a number >= 0).
    """
    metrics = reported_metrics(msg)
    if seconds_per_example is not None:
        n = metrics.get("num-examples", 0)
        n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0
        return n * epochs * seconds_per_example
    value = metrics.get("compute_time_s", unknown)
    return float(value) if isinstance(value, int | float) and value >= 0 else unknown


class StragglerPolicy(RoundPolicy):
    """The virtual clock: see the module docstring."""

    def __init__(
        self,
        *,
        network: SimulatedNetwork,
        seconds_per_example: float | None = 0.001,
        **rules: Any,
    ) -> None:
        super().__init__(**rules)
        self.network = network
        if seconds_per_example is not None and not seconds_per_example > 0:
            raise ValueError(f"seconds_per_example must be > 0 or null, got {seconds_per_example}")
        self.seconds_per_example = seconds_per_example

    def online(self, node_id: int, server_round: int) -> bool:
        return self.network.online(node_id, server_round)

    def close(self, rnd: Round) -> ClockRound:
        """Which replies count, and how long the round took on the simulated clock."""
        out = ClockRound()
        arrivals: list[tuple[float, Message]] = []
        replies, needed, asked = rnd.replies, rnd.needed, len(rnd.log.selected)
        for msg in replies:
            node = msg.metadata.src_node_id
            if self.network.drops(node, rnd.number):
                out.dropped += 1
                continue
            compute = compute_seconds(msg, rnd.epochs.get(node, 1), self.seconds_per_example)
            up = rnd.reply_bytes.get(id(msg), 0)
            out.arrived.append(msg)
            t = self.network.round_time(node, compute, rnd.bytes_down.get(node, 0), up)
            arrivals.append((t, msg))
            if not msg.has_error():  # a failure says nothing about the node's speed
                out.durations[node] = t
        out.dropped += max(asked - len(replies), 0)  # no reply at all (timeout, vanished node)
        self.decide(arrivals, out, needed=needed, asked=asked, limit=self.deadline())
        self.sim_time_s += out.sim_round_s
        return out


class MeasuredStragglers(RoundPolicy):
    """The same rules on measured reply times (wall seconds from push to pull)."""

    simulated = False

    def exchange_limits(self, needed: int, timeout: float) -> tuple[int | None, float]:
        """Stop pulling at the ``needed``-th reply or at the deadline, whichever comes first."""
        return needed, min(timeout, self.deadline())

    def close(self, rnd: Round) -> ClockRound:
        """Replies that arrived (with their measured times); those still in flight are late."""
        out = ClockRound(simulated=False)
        replies, needed, asked = rnd.replies, rnd.needed, len(rnd.log.selected)
        seconds, in_flight = rnd.reply_seconds, rnd.left_in_flight
        arrivals = []
        for msg in replies:
            t = seconds.get(msg.metadata.src_node_id, 0.0)
            out.arrived.append(msg)
            arrivals.append((t, msg))
            out.durations[msg.metadata.src_node_id] = t
        out.late = in_flight
        out.dropped = max(asked - len(replies) - in_flight, 0)  # pushes refused, lost nodes
        unfinished = in_flight if len(replies) < needed else 0  # stopped early: not failures
        self.decide(
            arrivals, out, needed=needed, asked=asked, limit=self.deadline(), unfinished=unfinished
        )
        self.sim_time_s += out.sim_round_s  # here: wall seconds to the round's close
        return out
