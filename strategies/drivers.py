"""Drivers own the loop; the engine (:class:`strategies.fedavg.FlExtFedAvg`) owns a round.

:class:`SyncRounds` is Flower's synchronous loop (configure, exchange, aggregate; federated,
then centralized evaluation) with the clock's deadline (virtual, or measured on a deployment),
a bounded wait for nodes, timing, checkpoints and one flat metrics dict per round for
tracking. A loop of another shape (the phases of secure aggregation, buffered asynchronous
aggregation) is a new driver with the same ``run`` signature, not an edit of the engine; what
it provides (here ``individual_updates``) is checked against what the parts require.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import DEBUG, INFO, WARNING
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore import log

from strategies.exchange import InFlight, exchange
from strategies.nodes import wait_for_nodes
from strategies.progress import RunSummary, progress_line
from strategies.stage import Stage

if TYPE_CHECKING:
    from strategies.fedavg import FlExtFedAvg

RoundCallback = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[int, ArrayRecord, dict[str, float]], None]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class RunSpec:
    """What every round of one run shares."""

    grid: Grid
    num_rounds: int
    timeout: float
    train_config: ConfigRecord
    evaluate_config: ConfigRecord
    evaluate_fn: EvaluateFn | None
    result: Result

    def central(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        """Centralized evaluation (``test_*`` metrics), recorded in the result."""
        if self.evaluate_fn is None:
            return {}
        record = self.evaluate_fn(server_round, arrays)
        if record is None:
            return {}
        self.result.evaluate_metrics_serverapp[server_round] = record
        return scalars("test_", record)


class SyncRounds(Stage):
    """Synchronous rounds; cumulative bytes and wall time carried across restarts."""

    name = "driver"
    # node_views: per-node slices of the model (sub-models); subclasses that aggregate other
    # than round by round (buffered, secure sums) do not provide it
    provides = frozenset({"individual_updates", "node_views"})
    label = "the synchronous driver"

    def __init__(self) -> None:
        self.bytes_down_cum = 0
        self.bytes_up_cum = 0
        self.wall_time_s = 0.0  # sum of round times, across restarts

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
        """Rounds ``first_round..num_rounds`` (see :meth:`FlExtFedAvg.start`)."""
        notify = self.start_run(engine, spec, first_round=first_round, on_round_end=on_round_end)
        engine.in_flight = InFlight(max_age_s=2 * spec.timeout)  # a silent node: retried after
        t_start = time.monotonic()
        progress = RunSummary(first_round=first_round, num_rounds=spec.num_rounds)
        for server_round in range(first_round, spec.num_rounds + 1):
            if self.stopped_before(engine, spec, server_round, should_stop):
                break
            log(INFO, "[ROUND %d/%d]", server_round, spec.num_rounds)
            metrics = self.round(engine, server_round, spec)
            progress.add(server_round, metrics)
            log(
                INFO,
                "Round %d/%d: %s",
                server_round,
                spec.num_rounds,
                progress_line(metrics, eta_s=progress.eta_s(server_round)),
            )
            if self.end_of_round(engine, spec, server_round, metrics, checkpoint_fn, notify):
                break
        log(INFO, "Finished: %s", progress.line(engine.stop_reason))
        log(DEBUG, "Strategy finished in %.2fs", time.monotonic() - t_start)
        return spec.result

    @staticmethod
    def start_run(
        engine: FlExtFedAvg, spec: RunSpec, *, first_round: int, on_round_end: RoundCallback | None
    ) -> RoundCallback:
        """Wait for the nodes; a first run reports its initial centralized evaluation (round 0)."""
        wait_for_nodes(
            spec.grid, engine.min_available_nodes, timeout=engine.node_wait_timeout, settle=0
        )
        notify = on_round_end or (lambda _round, _metrics: None)
        initial = spec.central(0, spec.result.arrays) if first_round == 1 else {}
        if initial:
            log(
                INFO,
                "Initial model: test acc %.4f loss %.4f",
                initial.get("test_accuracy", float("nan")),
                initial.get("test_loss", float("nan")),
            )
            notify(0, initial)
        return notify

    @staticmethod
    def stopped_before(
        engine: FlExtFedAvg,
        spec: RunSpec,
        server_round: int,
        should_stop: Callable[[], str | None] | None,
    ) -> bool:
        """A stage's reason, or the SuperLink's stop, ends the run before ``server_round``."""
        reason = engine.reason_to_stop(server_round, list(spec.grid.get_node_ids()))
        if reason is None and should_stop is not None:
            reason = should_stop()  # e.g. the run was stopped on the SuperLink
        if reason is None:
            return False
        engine.stop_reason = reason
        log(WARNING, "Training stopped: %s", reason)
        return True

    @staticmethod
    def end_of_round(  # noqa: PLR0917  (the round's outcome and where it goes)
        engine: FlExtFedAvg,
        spec: RunSpec,
        server_round: int,
        metrics: dict[str, float],
        checkpoint_fn: CheckpointFn | None,
        notify: RoundCallback,
    ) -> bool:
        """Stages see the metrics, then checkpoint and report; True if a stage ends the run."""
        engine.stop_reason = engine.after_round(server_round, metrics)  # before the checkpoint
        kept = engine.replacement()
        if kept is not None:  # a stage undid the round: the model it started from is kept
            spec.result.arrays = kept
            metrics.update(spec.central(server_round, kept))
        if checkpoint_fn is not None:
            checkpoint_fn(server_round, spec.result.arrays, metrics)
        notify(server_round, metrics)
        if engine.stop_reason is None:
            return False
        log(WARNING, "Training stopped after round %d: %s", server_round, engine.stop_reason)
        return True

    def round(self, engine: FlExtFedAvg, server_round: int, spec: RunSpec) -> dict[str, float]:
        """Train, evaluate (federated, then centralized) and collect the round's metrics."""
        result, grid = spec.result, spec.grid
        t_round = time.monotonic()
        new_arrays, train_metrics, exchange_metrics = self.train(engine, server_round, spec)
        rnd = engine.current
        assert rnd is not None
        t_train = time.monotonic() - t_round
        metrics: dict[str, float] = {}
        if new_arrays is not None:
            result.arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
            metrics.update(scalars("", train_metrics))
        evaluated = exchange(
            grid,
            engine.configure_evaluate(server_round, result.arrays, spec.evaluate_config, grid),
            timeout=spec.timeout,
            in_flight=engine.in_flight,
        )
        engine.drained(evaluated.drained)
        fed_metrics = engine.aggregate_evaluate(server_round, evaluated.replies)
        if fed_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = fed_metrics
            metrics.update(scalars("fed_eval_", fed_metrics))
        metrics.update(spec.central(server_round, result.arrays))
        self.bytes_down_cum += rnd.log.bytes_down
        self.bytes_up_cum += rnd.log.bytes_up
        metrics.update(rnd.log.metrics())
        metrics.update(exchange_metrics)
        round_time = time.monotonic() - t_round
        self.wall_time_s += round_time
        metrics.update(
            bytes_down_cum=self.bytes_down_cum,
            bytes_up_cum=self.bytes_up_cum,
            train_time_s=t_train,
            round_time_s=round_time,
            wall_time_s=self.wall_time_s,
        )
        return metrics

    def train(
        self, engine: FlExtFedAvg, server_round: int, spec: RunSpec
    ) -> tuple[ArrayRecord | None, MetricRecord | None, dict[str, float]]:
        """One train exchange: the new model (None: unchanged), its metrics, reply times."""
        messages = engine.configure_train(
            server_round, spec.result.arrays, spec.train_config, spec.grid
        )
        rnd = engine.current
        assert rnd is not None
        enough, limit = engine.clock_limits(rnd.needed, spec.timeout)
        trained = exchange(
            spec.grid, messages, timeout=limit, enough=enough, in_flight=engine.in_flight
        )
        rnd.reply_seconds = trained.by_node()
        rnd.left_in_flight = trained.left_in_flight
        engine.drained(trained.drained)
        new_arrays, train_metrics = engine.aggregate_train(server_round, trained.replies)
        return new_arrays, train_metrics, trained.metrics("train_")

    def state_dict(self) -> dict[str, Any]:
        return {
            "bytes_down_cum": self.bytes_down_cum,
            "bytes_up_cum": self.bytes_up_cum,
            "wall_time_s": self.wall_time_s,
        }

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.bytes_down_cum = int(state["bytes_down_cum"])
        self.bytes_up_cum = int(state["bytes_up_cum"])
        self.wall_time_s = float(state.get("wall_time_s", 0.0))


def scalars(prefix: str, record: MetricRecord) -> dict[str, float]:
    """The record's scalar entries as floats, keys prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in record.items() if not isinstance(v, list)}
