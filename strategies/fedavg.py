"""The round engine: FedAvg that trusts nothing a client says, built from stages.

It keeps Flower's Message-API shape (``configure_*`` / ``aggregate_*``, ``start``) and calls its
parts in the fixed phase order of :mod:`strategies.stage`, passing them one
:class:`~strategies.round.Round`. Three slots are filled by one part each: the sampler
(:mod:`strategies.sampling`), the decoder (:mod:`strategies.decoding`) and the aggregation
(:mod:`strategies.aggregation`, then an optional server optimizer). The loop is the driver's
(:mod:`strategies.drivers`). What the parts require is checked once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from fl_ext.aggregators import Aggregator, RobustAggregation
from fl_ext.compat import SCHEMA_KEY
from fl_ext.early_stopping import EarlyStopping
from fl_ext.selection import ClientRegistry, Selector, UniformSelector
from fl_ext.server_opt import ServerOptimizer
from flwr_records import named_array_record, record_to_named
from strategies.aggregation import Aggregation, ReferenceFn, RobustStep, ServerReference, ServerStep
from strategies.assembly import as_is, as_pipeline, distinct, first, slot
from strategies.byzantine import ByzantineSimulation
from strategies.checks import ReplyChecks
from strategies.compression import Compression
from strategies.decoding import Decoder
from strategies.drivers import CheckpointFn, EvaluateFn, RoundCallback, RunSpec, SyncRounds
from strategies.evaluation import EvaluationSampler, weighted_means
from strategies.exchange import InFlight
from strategies.privacy import PrivacyPlan
from strategies.replies import TrainReply
from strategies.round import Round
from strategies.round_log import RoundLog
from strategies.sampling import Sampler, SelectorSampler
from strategies.secure_aggregation import SecureAggregation
from strategies.secure_rounds import SecAggRounds
from strategies.settings import check_settings
from strategies.stage import Stage, load_parts_state, parts_state, unmet_requirements
from strategies.stages import (
    Compat,
    EarlyStop,
    EvaluateWithTrain,
    FedProx,
    TargetAccuracy,
    log_summary,
)
from strategies.stragglers import RoundPolicy
from strategies.views import VIEW_KEY
from strategies.wire import record_wire_bytes


class FlExtFedAvg(FedAvg):
    """Federated averaging with validated replies, capped weights and pluggable stages.

    Keyword-only parameters: ``fraction_*``, ``min_*_nodes``, ``min_available_nodes`` as in
    Flower (``fraction_evaluate=0``: no federated evaluation); ``max_examples_per_client``
    (a larger reported count is rejected); ``weight_cap_factor`` (weights capped at this
    multiple of the lower-median count: the default 2 bounds one liar's share near twice its
    fair 1/n while honest clients up to twice the typical size keep their weight);
    ``max_update_norm``; ``seed`` (selection); ``node_wait_timeout``; ``aggregation`` (the
    robust pipeline or a bare rule; the weighted mean by default); ``reference_update``
    (the server's own update on its root set, for FLTrust); ``byzantine`` (simulated attack);
    ``privacy`` (client-level DP: Poisson sampler + Gaussian mechanism; or DP-SGD
    bookkeeping); ``compression`` (codecs, the decoder slot); ``selector``; ``stragglers``
    (the clock: availability, over-selection, deadline, partial aggregation, fallback);
    ``target_accuracy`` (time to accuracy); ``evaluate_with_train``; ``proximal_mu``
    (FedProx); ``stages`` (more stages, after the built-in ones); ``server_opt``;
    ``early_stopping``; ``require_client_info`` (None: only when a part needs an fl-ext
    client); ``driver`` (the loop, :class:`SyncRounds` by default;
    :class:`~strategies.buffered.BufferedAsync` for FedBuff); ``secure_aggregation`` (SecAgg+:
    the server sees only the sum; its driver is :class:`~strategies.secure_rounds.SecAggRounds`).
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        max_examples_per_client: int | None = None,
        weight_cap_factor: float | None = 2.0,
        max_update_norm: float | None = None,
        seed: int = 0,
        node_wait_timeout: float = 120.0,
        aggregation: RobustAggregation | Aggregator | None = None,
        byzantine: ByzantineSimulation | None = None,
        reference_update: ReferenceFn | None = None,
        privacy: PrivacyPlan | None = None,
        compression: Compression | None = None,
        selector: Selector | None = None,
        stragglers: RoundPolicy | None = None,
        target_accuracy: float | None = None,
        evaluate_with_train: bool = False,
        proximal_mu: float = 0.0,
        stages: Sequence[Stage] = (),
        server_opt: ServerOptimizer | None = None,
        early_stopping: EarlyStopping | None = None,
        require_client_info: bool | None = None,
        driver: SyncRounds | None = None,
        secure_aggregation: SecureAggregation | None = None,
    ) -> None:
        check_settings(
            fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            max_examples_per_client=max_examples_per_client,
            weight_cap_factor=weight_cap_factor, max_update_norm=max_update_norm,
            node_wait_timeout=node_wait_timeout, target_accuracy=target_accuracy,
        )  # fmt: skip
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
        )
        self.max_examples_per_client = max_examples_per_client
        self.weight_cap_factor = weight_cap_factor
        self.max_update_norm = max_update_norm
        self.node_wait_timeout = float(node_wait_timeout)
        self.privacy, self.compression = privacy, compression
        self.byzantine, self.stragglers = byzantine, stragglers
        self.evaluate_with_train = bool(evaluate_with_train)
        if secure_aggregation is not None and max_update_norm is not None:
            raise ValueError(
                "max_update_norm cannot be checked under secure aggregation (the server sees "
                "only masked vectors): drop it; clients clip to secure_aggregation.clip_range"
            )
        if driver is None:
            driver = SecAggRounds(secure_aggregation) if secure_aggregation else SyncRounds()
        if secure_aggregation is not None and not isinstance(driver, SecAggRounds):
            raise ValueError(
                f"secure aggregation runs its own phases: {driver.label} cannot drive it "
                "(leave driver unset, or use driver=sync)"
            )
        self.driver = driver
        self.secure_aggregation = secure_aggregation
        parts: list[Stage] = [
            p for p in (stragglers, byzantine, privacy, compression, secure_aggregation) if p
        ]
        selector = selector or UniformSelector(
            fraction=fraction_train, minimum=min_train_nodes, seed=seed
        )
        self.sampler = slot(Sampler, parts, SelectorSampler(selector, min_nodes=min_train_nodes))
        self.decoder = slot(Decoder, parts, Decoder())
        default = RobustStep(
            as_pipeline(aggregation),
            min_replies=min_train_nodes,
            weight_cap_factor=weight_cap_factor,
        )
        self.aggregation = slot(Aggregation, [*parts, *stages], default)
        self.server_step = ServerStep(server_opt) if server_opt is not None else None
        extra: list[Stage] = [
            *([ServerReference(reference_update)] if reference_update else []),
            *([FedProx(proximal_mu=proximal_mu)] if proximal_mu else []),
            *([EvaluateWithTrain(min_nodes=min_evaluate_nodes, weight_cap_factor=weight_cap_factor)]
              if self.evaluate_with_train else []),
            *stages,
            *([EarlyStop(early_stopping)] if early_stopping is not None else []),
            *([TargetAccuracy(target_accuracy)] if target_accuracy is not None else []),
        ]  # fmt: skip
        needs_client = any(p.needs_fl_ext_client for p in parts + extra)
        self.compat = Compat(
            require_client_info=needs_client if require_client_info is None else require_client_info
        )
        self.evaluation = (
            EvaluationSampler(
                fraction=fraction_evaluate, min_nodes=min_evaluate_nodes, seed=seed + 1
            )
            if fraction_evaluate > 0
            else None
        )
        self.stages = distinct(
            [self.compat, *parts, *extra, self.sampler, self.decoder, self.aggregation,
             self.server_step, self.evaluation, self.driver]
        )  # fmt: skip
        unmet = unmet_requirements(self.stages, driver=self.driver.label, provided=())
        if unmet:
            raise ValueError(unmet)
        self.checks = ReplyChecks(
            stages=self.stages,
            decoder=self.decoder,
            max_examples=max_examples_per_client,
            max_update_norm=max_update_norm,
            required_metrics=("train_loss",) if self.compat.require_client_info else (),
        )
        self.in_flight = InFlight()  # messages not waited for: their nodes are busy
        self.stop_reason: str | None = None
        self.current: Round | None = None  # the round being configured/aggregated

    # ------------------------------------------------------------- read-only
    @property
    def round_log(self) -> RoundLog:
        """The current round's log (an empty one before the first round)."""
        return self.current.log if self.current is not None else RoundLog(0)

    @property
    def registry(self) -> ClientRegistry:
        """The per-node history the sampler keeps (selection, speed, failures)."""
        assert self.sampler.registry is not None, "this sampler keeps no node history"
        return self.sampler.registry

    @property
    def incompatible(self) -> dict[int, str]:
        """Nodes refused for their version or model schema, and why."""
        return self.compat.incompatible

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> %s", type(self).__name__)
        log(INFO, "\t│\t├── max examples per client: %s", self.max_examples_per_client)
        log(INFO, "\t│\t├── weight cap factor: %s", self.weight_cap_factor)
        log(INFO, "\t│\t├── max update norm: %s", self.max_update_norm)
        log(INFO, "\t│\t└── aggregation: %s", self.aggregation.describe())
        log_summary(self.stages)
        super().summary()

    def check_federation(self, num_nodes: int) -> None:
        """Raise ValueError if a round on ``num_nodes`` connected nodes can never aggregate."""
        if self.secure_aggregation is not None:
            self.secure_aggregation.check_start(num_nodes=num_nodes)
        asked = self.sampler.sample_size(num_nodes)
        need, why = self.aggregation.requirement()
        if asked < need:
            raise ValueError(
                f"{self.aggregation.describe()} needs at least {need} updates per round "
                f"({why}), but fraction_train={self.fraction_train} of {num_nodes} nodes "
                f"selects {asked}"
            )

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``{part name: its state}`` (JSON-able) and the parts' arrays (``name.key``)."""
        return parts_state(self.stages)

    def load_state_dict(
        self, state: dict[str, Any], tensors: dict[str, np.ndarray], *, first_round: int
    ) -> None:
        """Restore :meth:`state_dict` output before running from ``first_round``."""
        load_parts_state(self.stages, state, tensors, first_round=first_round)

    # ------------------------------------------------------------------ train
    def configure_train(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        *,
        asked: int | None = None,
    ) -> Iterable[Message]:
        """Select nodes and build one train message each; ``config`` is not modified.

        ``asked``: exactly this many of the eligible nodes (fewer if fewer are free), for a
        driver that fills free slots (buffered asynchronous aggregation).
        """
        rnd = self.current = Round.start(
            server_round, record_to_named(arrays), max_update_norm=self.max_update_norm
        )
        rnd.asked = asked
        rnd.preview = partial(self.aggregation.preview, rnd)
        busy = self.in_flight.busy()
        nodes = [n for n in grid.get_node_ids() if n not in busy]
        for stage in self.stages:
            nodes = stage.eligible(rnd, nodes)
        rnd.available = nodes
        over_select = self.stragglers.asked if self.stragglers is not None else as_is
        rnd.log.selected = self.sampler.sample(rnd, nodes, over_select=over_select)
        base: dict[str, Any] = {}
        sent = arrays
        for stage in self.stages:
            base.update(stage.entries(rnd))
            sent = stage.broadcast(rnd, sent)
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for node in rnd.log.selected:
            entries = dict(base)
            for stage in self.stages:
                entries.update(stage.node_entries(rnd, node))
            view = first(stage.node_view(rnd, node) for stage in self.stages)
            if view is not None:
                rnd.views[node] = view
                entries.update({VIEW_KEY: view.key, SCHEMA_KEY: view.schema})
            groups.setdefault(tuple(sorted(entries.items())), []).append(node)
        messages: list[Message] = []
        for key, group in groups.items():
            view = rnd.views.get(group[0])
            arrays_sent = sent if view is None else named_array_record(view.send(rnd.global_named))
            record = self._record(arrays_sent, config, dict(key))
            nbytes = record_wire_bytes(record)
            rnd.log.bytes_down += nbytes * len(group)
            rnd.bytes_down.update(dict.fromkeys(group, nbytes))
            epochs = dict(key).get("local-epochs", config.get("local-epochs", 1))
            rnd.epochs.update(dict.fromkeys(group, int(epochs)))
            messages += self._construct_messages(record, group, MessageType.TRAIN)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, aggregate the valid updates, or skip the round."""
        updates, accepted = self.accept_train(server_round, replies)
        return self.finish_train(server_round, updates, accepted)

    def accept_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        """The round's valid updates after the clock, the checks and the stages' transforms."""
        rnd = self._require_round(server_round)
        rnd.replies = list(replies)
        rnd.reply_bytes = {
            id(m): record_wire_bytes(m.content) for m in rnd.replies if m.has_content()
        }
        clock = self.stragglers.close(rnd) if self.stragglers is not None else None
        rnd.arrived = clock.arrived if clock is not None else rnd.replies
        rnd.durations = clock.durations if clock is not None else rnd.reply_seconds
        rnd.log.bytes_up += sum(rnd.reply_bytes.get(id(m), 0) for m in rnd.arrived)
        for stage in self.stages:
            stage.on_replies(rnd)
        if clock is not None:
            rnd.log.clock = clock
            if clock.fallback is not None:
                rnd.log.skipped = clock.fallback
                log(WARNING, "ALERT round %d: %s", server_round, clock.fallback)
        updates, accepted = self.checks.train(rnd, clock.kept if clock is not None else rnd.replies)
        for stage in self.stages:
            stage.on_accepted(rnd, accepted)
        for stage in self.stages:
            updates, accepted = stage.transform(rnd, updates, accepted)
        rnd.updates, rnd.accepted = updates, accepted
        return updates, accepted

    def finish_train(
        self, server_round: int, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate (unless the round is skipped), collect the metrics, step the server."""
        rnd = self._require_round(server_round)
        delta = None
        if rnd.log.skipped is None or self.aggregation.min_inputs() == 0:
            delta = rnd.aggregate = self.aggregation.aggregate(rnd, updates, accepted)
        metrics: dict[str, Any] = {"clients_valid": len(accepted)}
        losses = [float(r.metrics["train_loss"]) for r in accepted if "train_loss" in r.metrics]
        if losses and delta is not None:
            metrics["train_loss"] = float(np.mean(losses))
        for stage in self.stages:
            metrics.update({k: float(v) for k, v in stage.metrics(rnd).items()})
        if delta is None:
            return None, MetricRecord(metrics)
        if self.server_step is not None:
            delta = self.server_step.step(delta)
        return named_array_record(rnd.spec.unflatten(rnd.global_flat + delta)), MetricRecord(
            metrics
        )

    # --------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select nodes for federated evaluation (none when ``fraction_evaluate`` is 0)."""
        if self.current is None or self.current.number != server_round:
            self.current = Round.start(server_round, record_to_named(arrays))
        rnd = self.current
        if self.evaluation is None or self.evaluate_with_train:
            return []  # no federated evaluation, or the clients evaluated with their train replies
        busy = self.in_flight.busy()
        nodes = [n for n in grid.get_node_ids() if n not in busy]
        for stage in self.stages:
            nodes = stage.eligible_to_evaluate(nodes)
        selected = self.evaluation.select(nodes)
        if not selected:
            return []
        rnd.log.eval_selected = len(selected)
        record = self._record(arrays, config, Compat.entries_for(server_round, rnd.schema))
        rnd.log.bytes_down += record_wire_bytes(record) * len(selected)
        return self._construct_messages(record, selected, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted (capped) mean of valid clients' loss and accuracy."""
        rlog = self.round_log
        replies = list(replies)
        rlog.bytes_up += sum(record_wire_bytes(m.content) for m in replies if m.has_content())
        accepted = self.checks.evaluate(self.current, rlog, replies)
        if not accepted or len(accepted) < self.min_evaluate_nodes:
            return None
        values = {key: [float(r.metrics[key]) for r in accepted] for key in ("loss", "accuracy")}
        counts = [r.num_examples for r in accepted]
        return MetricRecord(dict(weighted_means(counts, values, self.weight_cap_factor)))

    # ------------------------------------------------------------------- loop
    def start(  # noqa: PLR0917  (Flower's positional signature plus the callback)
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        on_round_end: RoundCallback | None = None,
        *,
        first_round: int = 1,
        checkpoint_fn: CheckpointFn | None = None,
        should_stop: Callable[[], str | None] | None = None,
    ) -> Result:
        """The driver's loop (:class:`SyncRounds`), after a start-up summary.

        ``on_round_end(round, metrics)`` receives everything about the round in one flat
        dict (centralized and federated evaluation, counters, bytes, times); round 0 reports
        the initial centralized evaluation. ``checkpoint_fn(round, arrays, metrics)`` runs
        before it. ``first_round > 1`` continues a restored run (:meth:`load_state_dict`).
        ``should_stop()`` is asked before each round; a reason it returns ends the run.
        """
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        if not 1 <= first_round <= num_rounds:
            raise ValueError(
                f"first_round must be in [1, num_rounds={num_rounds}], got {first_round}"
            )
        log(INFO, "Starting %s", type(self).__name__)
        self.summary()
        spec = RunSpec(
            grid=grid,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config if train_config is not None else ConfigRecord(),
            evaluate_config=evaluate_config if evaluate_config is not None else ConfigRecord(),
            evaluate_fn=evaluate_fn,
            result=Result(arrays=initial_arrays),
        )
        return self.driver.run(
            self, spec, first_round=first_round, on_round_end=on_round_end,
            checkpoint_fn=checkpoint_fn, should_stop=should_stop,
        )  # fmt: skip

    # ------------------------------------------------------- driver's helpers
    def reason_to_stop(self, server_round: int, nodes: list[int]) -> str | None:
        """The first stage's reason to end the run before ``server_round``, or None."""
        return first(stage.stop_reason(server_round, nodes) for stage in self.stages)

    def after_round(self, server_round: int, metrics: dict[str, float]) -> str | None:
        """Every stage sees the round's metrics (and may add to them); the first reason ends."""
        reasons = [stage.after_round(server_round, metrics) for stage in self.stages]
        return first(iter(reasons))

    def artifacts(self) -> dict[str, str | bytes]:
        """Files the stages made this round (telemetry, audit log, plots), to be tracked."""
        out: dict[str, str | bytes] = {}
        for stage in self.stages:
            out.update(stage.artifacts())
        return out

    def replacement(self) -> ArrayRecord | None:
        """The model a stage keeps instead of the round's (rollback), or None."""
        named = first(stage.replacement() for stage in self.stages)
        return None if named is None else named_array_record(named)

    def clock_limits(self, needed: int, timeout: float) -> tuple[int | None, float]:
        """``(stop after this many replies, wait at most)`` for the train exchange."""
        if self.stragglers is None:
            return None, timeout
        return self.stragglers.exchange_limits(needed, timeout)

    def drained(self, late: list[tuple[int, float]]) -> None:
        """Replies of earlier rounds that came after their round closed: speed still counts."""
        self.round_log.late_drained += len(late)
        for node, seconds in late:
            for stage in self.stages:
                stage.on_late(node, seconds)

    def _record(
        self, arrays: ArrayRecord, config: ConfigRecord, extra: dict[str, Any]
    ) -> RecordDict:
        merged = ConfigRecord({**dict(config), **extra})  # a copy: the caller's is untouched
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: merged})

    def _require_round(self, server_round: int) -> Round:
        if self.current is None or self.current.number != server_round:
            raise RuntimeError(
                f"aggregate_train of round {server_round} called before its configure_train"
            )
        return self.current
