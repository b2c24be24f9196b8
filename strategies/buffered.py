"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022) as a driver on the engine.

``concurrency`` nodes train at once; every reply is checked as a synchronous round's reply is
(the engine's checks, decoder and stages) against the model version its node started from, and
the update joins a buffer; every ``buffer_size`` buffered updates make one new model version:
the aggregation slot (mean or a robust rule) over the updates scaled by their staleness weight
``s(tau)`` and the server learning rate. A node is given its next job as soon as its reply is
in, so fast nodes never wait for slow ones.

Staleness is the server's own record: each message id maps to (node, version it was sent);
``tau`` = current version - that version; older than ``max_staleness`` is dropped (counted).
At most one message is in flight per node. A message that errors, or is not answered within
``job_timeout_s``, frees its slot for another node; its node backs off (``backoff_s`` doubling
per consecutive failure) and, after ``cooldown_failures`` failures in a row, cools down for
``cooldown_s``; a timed-out node stays busy until its late reply is drained (never used). If
the node left the grid meanwhile (its process died with the message) and is back, the message
is taken as lost once twice ``job_timeout_s`` have passed (counted ``lost``) and the node may be
asked again; a node that never left is never sent a second message.

Time: with a simulated network (``network=ideal|mobile|mixed``) arrivals are ordered on the
virtual clock (dispatch time + the node's simulated round time), one event at a time, so a
run is deterministic on any machine; on a deployment, arrivals are taken as they come and
times are measured. The simulated network's availability and dropouts apply to jobs as they
do to synchronous rounds, drawn per model version: a node offline for the version being
trained gets no job, and a job whose node drops out fails when its reply would have arrived
(its client trained: the privacy ledger still records it; its update is never used). Compute
time is modeled as the rounds' is (examples x epochs x ``seconds_per_example`` x the node's
speed) unless ``seconds_per_example`` is None (then the client's reported time).

Each version is a checkpoint and one metrics row (accuracy, staleness mean/max, stale updates
dropped, nodes busy, failures, retries). At the end the work in flight is waited for
(``drain="wait"``: its replies are pulled and counted as late, never aggregated) or discarded.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp.strategy import Result
from flwr.supercore import log

from fl_ext.asynchronous.staleness import Staleness
from fl_ext.selection.network import SimulatedNetwork
from flwr_records import record_to_named
from strategies.drivers import CheckpointFn, RoundCallback, RunSpec, SyncRounds, scalars
from strategies.exchange import InFlight
from strategies.replies import TrainReply
from strategies.round import Round
from strategies.stragglers import compute_seconds
from strategies.wire import record_wire_bytes

if TYPE_CHECKING:
    from strategies.fedavg import FlExtFedAvg

DRAINS = ("wait", "discard")


@dataclass
class Job:
    """One message in flight: who, which version it started from, when (virtual/real)."""

    node: int
    version: int
    rnd: Round
    sent_at: float
    pushed_wall: float
    drops: bool = False  # the simulated network drops this job (decided at dispatch)
    vanished: bool = False  # its node left the grid while the message was out (deployment)


@dataclass(order=True)
class Arrival:
    """A reply waiting to be processed, ordered by its (virtual) arrival time."""

    at: float
    order: int
    message_id: str = field(compare=False)
    reply: Message = field(compare=False)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class BufferedAsync(SyncRounds):
    """FedBuff's loop (see the module docstring); ``num_rounds`` counts model versions."""

    provides = frozenset({"individual_updates"})
    label = "the buffered asynchronous driver"

    def __init__(
        self,
        *,
        concurrency: int = 10,
        buffer_size: int = 5,
        staleness: Staleness | dict[str, Any] | None = None,
        max_staleness: int | None = None,
        server_lr: float = 1.0,
        job_timeout_s: float | None = None,
        backoff_s: float = 1.0,
        cooldown_failures: int = 3,
        cooldown_s: float = 60.0,
        drain: str = "wait",
        network: SimulatedNetwork | None = None,
        seconds_per_example: float | None = None,
        poll_s: float = 0.02,
    ) -> None:
        super().__init__()
        self.concurrency = _positive_int("concurrency", concurrency)
        self.buffer_size = _positive_int("buffer_size", buffer_size)
        if self.buffer_size > self.concurrency:
            raise ValueError(
                f"buffer_size={buffer_size} > concurrency={concurrency}: the buffer could never "
                "fill while every slot waits for it"
            )
        self.staleness = (
            staleness if isinstance(staleness, Staleness) else Staleness(**(staleness or {}))
        )
        if max_staleness is not None:
            _non_negative("max_staleness", max_staleness)
        self.max_staleness = max_staleness
        if not (isinstance(server_lr, int | float) and server_lr > 0):
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        self.server_lr = float(server_lr)
        self.job_timeout_s = (
            None if job_timeout_s is None else _non_negative("job_timeout_s", job_timeout_s)
        )
        self.backoff_s = _non_negative("backoff_s", backoff_s)
        self.cooldown_failures = _positive_int("cooldown_failures", cooldown_failures)
        self.cooldown_s = _non_negative("cooldown_s", cooldown_s)
        if drain not in DRAINS:
            raise ValueError(f"drain must be one of {DRAINS}, got {drain!r}")
        self.drain = drain
        self.network = network
        if seconds_per_example is not None and not seconds_per_example > 0:
            raise ValueError(f"seconds_per_example must be > 0 or null, got {seconds_per_example}")
        self.seconds_per_example = seconds_per_example
        self.poll_s = float(poll_s)
        # state carried across restarts
        self.clock_s = 0.0  # virtual (simulation) or wall seconds of asynchronous training
        self.failures: dict[int, int] = {}  # consecutive failures per node
        self.per_node: dict[int, list[int]] = {}  # node -> [jobs sent, updates aggregated]
        self.counters = {
            "dropped_stale": 0, "failed": 0, "timed_out": 0, "rejected": 0, "late": 0,
            "dropped_out": 0, "offline": 0, "jobs": 0, "lost": 0,
        }  # fmt: skip

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        engine: FlExtFedAvg,
        spec: RunSpec,
        *,
        first_round: int,
        on_round_end: RoundCallback | None,
        checkpoint_fn: CheckpointFn | None,
        should_stop: Callable[[], str | None] | None,
    ) -> Result:
        need, why = engine.aggregation.requirement()
        if self.buffer_size < max(need, engine.aggregation.min_inputs()):
            raise ValueError(
                f"buffer_size={self.buffer_size} is below what {why} needs per version "
                f"({max(need, engine.aggregation.min_inputs())}, min_train_nodes included)"
            )
        notify = self.start_run(engine, spec, first_round=first_round, on_round_end=on_round_end)
        loop = _Loop(self, engine, spec, version=first_round - 1)
        while loop.version < spec.num_rounds:
            if self.stopped_before(engine, spec, loop.version + 1, should_stop):
                break
            loop.dispatch()
            arrival = loop.next_arrival()
            if arrival is None:
                continue
            loop.process(arrival)
            if len(loop.buffer) >= self.buffer_size:
                metrics = loop.aggregate()
                if self.end_of_round(engine, spec, loop.version, metrics, checkpoint_fn, notify):
                    break
        loop.finish()
        log(INFO, "Finished: %d model versions, %.1f s of %s time", loop.version, self.clock_s,
            "simulated" if self.network is not None else "wall")  # fmt: skip
        return spec.result

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "clock_s": self.clock_s,
            "failures": {str(k): v for k, v in self.failures.items()},
            "per_node": {str(k): list(v) for k, v in self.per_node.items()},
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        super().load_state_dict(state, first_round=first_round)
        self.clock_s = float(state.get("clock_s", 0.0))
        self.failures = {int(k): int(v) for k, v in dict(state.get("failures", {})).items()}
        self.per_node = {
            int(k): [int(v[0]), int(v[1])] for k, v in dict(state.get("per_node", {})).items()
        }
        self.counters.update({k: int(v) for k, v in dict(state.get("counters", {})).items()})


class _Loop:
    """One run's in-flight jobs, buffer and arrivals (the driver keeps what outlives it)."""

    def __init__(
        self, driver: BufferedAsync, engine: FlExtFedAvg, spec: RunSpec, *, version: int
    ) -> None:
        self.driver, self.engine, self.spec = driver, engine, spec
        self.version = version
        self.jobs: dict[str, Job] = {}  # message id -> job
        self.pending: list[Arrival] = []  # replies in, not yet processed (virtual order)
        self.buffer: list[tuple[torch.Tensor, float, int, TrainReply]] = []
        self.not_before: dict[int, float] = {}  # node -> clock time it may be asked again
        self.stale_ids: dict[str, Job] = {}  # timed out, still in flight: drained, never used
        self.order = 0
        self.wall0 = time.monotonic() - driver.clock_s
        self.version_clock = driver.clock_s  # when the last version was made (its time/round_s)
        self.version_stats: dict[str, float] = {"retries": 0.0, "failed": 0.0, "dropped_stale": 0.0}

    # ---------------------------------------------------------------- clock
    def now(self) -> float:
        if self.driver.network is not None:
            return self.driver.clock_s
        return time.monotonic() - self.wall0

    def _advance(self, t: float) -> None:
        self.driver.clock_s = max(self.driver.clock_s, t)

    # ---------------------------------------------------------------- dispatch
    def dispatch(self) -> None:
        """Fill every free slot with a job on a free, eligible node (one message per node)."""
        free = self.driver.concurrency - len(self.jobs)
        if free <= 0:
            return
        now = self.now()
        busy = {j.node for j in (*self.jobs.values(), *self.stale_ids.values())}
        waiting = {n for n, t in self.not_before.items() if t > now}
        offline = self._offline(busy | waiting)
        # the engine leaves out the nodes it is told are busy: ours, and those backing off
        self.engine.in_flight = InFlight(
            max_age_s=float("inf"),
            pending={f"busy-{n}": (n, time.monotonic()) for n in busy | waiting | offline},
        )
        messages = list(
            self.engine.configure_train(
                self.version + 1, self.spec.result.arrays, self.spec.train_config,
                self.spec.grid, asked=free,
            )
        )  # fmt: skip
        rnd = self.engine.current
        assert rnd is not None
        if not messages:
            if not self.jobs and self.driver.network is not None and not waiting:
                # the virtual clock cannot move without an arrival: waiting would never end
                raise RuntimeError(
                    f"no node can train model version {self.version + 1}: nothing is in "
                    f"flight or backing off, {len(offline)} node(s) are offline in the "
                    "simulated network for this version and the others were left out by the "
                    "stages (e.g. spent privacy budgets, min_train_nodes)"
                )
            return
        self.driver.bytes_down_cum += rnd.log.bytes_down
        ids = {mid for mid in self.spec.grid.push_messages(messages) if mid}
        wall = time.monotonic()
        for msg in messages:
            mid = msg.metadata.message_id
            node = int(msg.metadata.dst_node_id)
            if mid in ids:
                self.driver.counters["jobs"] += 1  # client trainings started (the compute spent)
                self.driver.per_node.setdefault(node, [0, 0])[0] += 1
                network = self.driver.network
                drops = network is not None and network.drops(node, self.version + 1)
                self.jobs[mid] = Job(
                    node=node, version=self.version, rnd=rnd, sent_at=now, pushed_wall=wall,
                    drops=drops,
                )  # fmt: skip
            else:  # refused push: the node is gone
                self._failed(node, "the push was refused")

    def _offline(self, known: set[int]) -> set[int]:
        """Nodes the simulated network has offline for the version being trained."""
        network = self.driver.network
        if network is None:
            return set()
        key = self.version + 1
        off = {n for n in self.spec.grid.get_node_ids() if n not in known}
        off = {n for n in off if not network.online(n, key)}
        self.driver.counters["offline"] = len(off)  # the last dispatch's count (a gauge)
        return off

    # ---------------------------------------------------------------- arrivals
    def next_arrival(self) -> Arrival | None:
        """The next reply to process: the earliest on the virtual clock, else the first in."""
        simulated = self.driver.network is not None
        while True:
            self._pull()
            # virtual clock: an event is next only once no reply still out could come earlier
            if self.pending and (not simulated or len(self.pending) >= len(self.jobs)):
                arrival = heapq.heappop(self.pending)
                self._advance(arrival.at)
                return arrival
            if not self.jobs:
                self.dispatch()
                if not self.jobs:  # nobody to ask: wait for a node to come back
                    time.sleep(self.driver.poll_s)
                    self._advance(min(self.not_before.values(), default=self.now()))
                    return None
                continue
            self._expire()
            time.sleep(self.driver.poll_s)

    def _pull(self) -> None:
        # a reply can be pulled once: Flower answers a second pull with an error reply
        waiting = {a.message_id for a in self.pending}
        ids = [*(mid for mid in self.jobs if mid not in waiting), *self.stale_ids]
        if not ids:
            return
        for reply in self.spec.grid.pull_messages(ids):
            mid = reply.metadata.reply_to_message_id
            if mid in self.stale_ids:  # its job timed out: speed still counts, the update not
                late = self.stale_ids.pop(mid)
                self.driver.counters["late"] += 1
                self.engine.drained([(late.node, time.monotonic() - late.pushed_wall)])
                continue
            found = self.jobs.get(mid)
            if found is None or mid in waiting:  # unknown, or its reply is already in
                continue
            job = found
            self.order += 1
            at = self._arrival_time(job, reply)
            heapq.heappush(self.pending, Arrival(at, self.order, mid, reply))

    def _arrival_time(self, job: Job, reply: Message) -> float:
        if self.driver.network is None:
            return time.monotonic() - self.wall0
        epochs = job.rnd.epochs.get(job.node, 1)
        compute = compute_seconds(reply, epochs, self.driver.seconds_per_example, unknown=1.0)
        up = record_wire_bytes(reply.content) if reply.has_content() and not job.drops else 0
        down = job.rnd.bytes_down.get(job.node, 0)
        return job.sent_at + self.driver.network.round_time(job.node, compute, down, up)

    def _expire(self) -> None:
        timeout = self.driver.job_timeout_s
        if timeout is None or self.driver.network is not None:
            return
        now = time.monotonic()
        for mid, job in list(self.jobs.items()):
            if now - job.pushed_wall > timeout:
                del self.jobs[mid]
                self.stale_ids[mid] = job
                self.driver.counters["timed_out"] += 1
                self._failed(job.node, f"no reply within job_timeout_s={timeout}")
        if not self.stale_ids:
            return
        online = set(self.spec.grid.get_node_ids())
        for mid, job in list(self.stale_ids.items()):
            # a message lost with its node's process (killed, restarted) is never answered;
            # one that is only slow still runs there. Only a node seen gone since the push may
            # be asked again (after twice the timeout): never two messages to a live node
            if job.node not in online:
                job.vanished = True
            if job.vanished and job.node in online and now - job.pushed_wall > 2 * timeout:
                del self.stale_ids[mid]
                self.driver.counters["lost"] += 1
                log(INFO, "\t> node %d came back: message %s taken as lost", job.node, mid[:12])

    def _failed(self, node: int, reason: str) -> None:
        d = self.driver
        count = d.failures.get(node, 0) + 1
        d.failures[node] = count
        d.counters["failed"] += 1
        self.version_stats["failed"] += 1
        self.version_stats["retries"] += 1  # the slot goes to another node at once
        wait = d.backoff_s * 2 ** (count - 1)
        if count >= d.cooldown_failures:
            wait = max(wait, d.cooldown_s)
            log(
                WARNING,
                "\t> node %d cools down for %.0f s after %d failures: %s",
                node,
                wait,
                count,
                reason,
            )
        else:
            log(
                INFO,
                "\t> node %d failed (%s); retried elsewhere, back off %.1f s",
                node,
                reason,
                wait,
            )
        self.not_before[node] = self.now() + wait

    # ---------------------------------------------------------------- process
    def process(self, arrival: Arrival) -> None:
        """Check the reply against its start version; buffer its update (or count why not)."""
        job = self.jobs.pop(arrival.message_id, None)
        if job is None:  # not ours any more (drained or duplicated): never used twice
            return
        reply = arrival.reply
        if job.drops and not reply.has_error():  # the node vanished mid-job (simulated)
            self._dropped_out(job, reply)
            return
        if reply.has_error():
            self._failed(job.node, reply.error.reason or f"error {reply.error.code}")
            self.engine.current = job.rnd
            self.engine.checks.report_error(job.rnd, reply)
            return
        rnd = Round.start(
            job.version + 1, job.rnd.global_named, max_update_norm=job.rnd.max_update_norm
        )
        rnd.log.selected = [job.node]
        rnd.bytes_down, rnd.epochs = job.rnd.bytes_down, job.rnd.epochs
        rnd.reply_seconds = {job.node: arrival.at - job.sent_at}
        self.engine.current = rnd
        updates, accepted = self.engine.accept_train(rnd.number, [reply])
        self.driver.bytes_up_cum += rnd.log.bytes_up
        if not accepted:
            self.driver.counters["rejected"] += 1
            return
        self.driver.failures.pop(job.node, None)
        tau = self.version - job.version  # the server's own record, never the client's word
        limit = self.driver.max_staleness
        if limit is not None and tau > limit:
            self.driver.counters["dropped_stale"] += 1
            self.version_stats["dropped_stale"] += 1
            log(INFO, "\t> update of node %d dropped: staleness %d > %d", job.node, tau, limit)
            return
        self.buffer.append((updates[0].clone(), self.driver.staleness(tau), tau, accepted[0]))

    def _dropped_out(self, job: Job, reply: Message) -> None:
        """The stages see the reply (its client trained: DP spend); the update is never used."""
        rnd = Round.start(job.version + 1, job.rnd.global_named)
        rnd.log.selected, rnd.replies = [job.node], [reply]
        self.engine.current = rnd
        for stage in self.engine.stages:
            stage.on_replies(rnd)
        self.driver.counters["dropped_out"] += 1
        self._failed(job.node, "dropped out (simulated network)")

    # ---------------------------------------------------------------- aggregate
    def aggregate(self) -> dict[str, float]:
        """One model version from the buffer: the aggregation over s(tau) * lr * update."""
        d, engine, spec = self.driver, self.engine, self.spec
        items, self.buffer = self.buffer[: d.buffer_size], self.buffer[d.buffer_size :]
        scale = torch.tensor([s for _, s, _, _ in items], dtype=torch.float32) * d.server_lr
        stacked = torch.stack([u for u, _, _, _ in items]) * scale[:, None]
        accepted = [r for _, _, _, r in items]
        for r in accepted:
            d.per_node.setdefault(r.node_id, [0, 0])[1] += 1
        rnd = Round.start(self.version + 1, record_to_named(spec.result.arrays))
        rnd.log.selected = [r.node_id for r in accepted]
        engine.current = rnd
        new_arrays, train_metrics = engine.finish_train(rnd.number, stacked, accepted)
        self.version += 1
        if new_arrays is not None:
            spec.result.arrays = new_arrays
        taus = np.array([t for _, _, t, _ in items], dtype=np.float64)
        metrics: dict[str, float] = scalars("", train_metrics) if train_metrics is not None else {}
        if train_metrics is not None:
            spec.result.train_metrics_clientapp[self.version] = train_metrics
        metrics.update(spec.central(self.version, spec.result.arrays))
        metrics.update(
            staleness_mean=float(taus.mean()), staleness_max=float(taus.max()),
            staleness_weight_mean=float(np.mean([w for _, w, _, _ in items])),
            clients_busy=float(len(self.jobs)), sim_time_s=d.clock_s,
            round_time_s=d.clock_s - self.version_clock,
            wall_time_s=time.monotonic() - self.wall0 if d.network is None else d.clock_s,
            bytes_up_cum=float(d.bytes_up_cum), bytes_down_cum=float(d.bytes_down_cum),
            **{f"async_{k}": float(v) for k, v in d.counters.items()},
            **{f"version_{k}": v for k, v in self.version_stats.items()},
        )  # fmt: skip
        self.version_stats = dict.fromkeys(self.version_stats, 0.0)
        self.version_clock = d.clock_s
        log(INFO, "Version %d/%d: %s", self.version, spec.num_rounds, _line(metrics))
        return metrics

    def finish(self) -> None:
        """Drain: wait for the work in flight (its updates are counted, not aggregated) or not."""
        for arrival in self.pending:  # replies already in: their jobs are done
            self.jobs.pop(arrival.message_id, None)
        self.pending = []
        if self.driver.drain == "wait":
            deadline = time.monotonic() + (self.driver.job_timeout_s or self.spec.timeout)
            while self.jobs and time.monotonic() < deadline:
                for reply in self.spec.grid.pull_messages(list(self.jobs)):
                    self.jobs.pop(reply.metadata.reply_to_message_id, None)
                    self.driver.counters["late"] += 1
                time.sleep(self.driver.poll_s)
        left = len(self.jobs) + len(self.buffer)
        if left:
            log(INFO, "\t> %d update(s) in flight or buffered at the end were not aggregated", left)
        self.engine.in_flight = InFlight(
            pending={
                mid: (j.node, j.pushed_wall) for mid, j in {**self.jobs, **self.stale_ids}.items()
            }
        )


def _line(metrics: dict[str, float]) -> str:
    acc = metrics.get("test_accuracy")
    parts = [] if acc is None else [f"test acc {acc:.4f}"]
    parts.append(
        f"staleness mean {metrics['staleness_mean']:.2f} max {metrics['staleness_max']:.0f}"
    )
    parts.append(f"busy {metrics['clients_busy']:.0f}")
    parts.append(f"t {metrics['sim_time_s']:.1f} s")
    return " | ".join(parts)
