"""FedAvg that trusts nothing a client says: the base every fl-ext capability plugs into.

It keeps Flower's Message-API shape (``configure_*`` / ``aggregate_*`` and a ``start`` loop)
and adds: a seeded selector, a check of every reply (bad ones are counted and logged, never
raised), capped example-count weights, aggregation of updates (reply minus global model)
through a framework-free rule, skipped rounds when too few valid replies arrive, bytes
measured on the records, and a per-round callback for tracking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from logging import DEBUG, INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from fl_ext import __version__
from fl_ext.aggregators import (
    Aggregator,
    AggregatorState,
    RobustAggregation,
    WeightedMean,
    capped_example_weights,
)
from fl_ext.compat import (
    CLIENT_INFO,
    INCOMPATIBLE,
    schema_hash,
)
from fl_ext.early_stopping import EarlyStopping
from fl_ext.params import ParamSpec
from fl_ext.refusals import DECLINED
from fl_ext.selection import ClientRegistry, Selector, UniformSelector
from fl_ext.server_opt import ServerOptimizer
from fl_ext.validation import Rejection, RejectReason, check_update_norm, update_norm
from flwr_records import named_array_record, record_to_named
from strategies.byzantine import ByzantineSimulation
from strategies.compression import AdaptiveCompression, Compression
from strategies.exchange import InFlight, exchange
from strategies.nodes import wait_for_nodes
from strategies.privacy import ClientLevelDP, PrivacyPlan, SampleLevelDP
from strategies.progress import RunSummary, progress_line
from strategies.replies import (
    UPDATE_KEY,
    EvaluateReply,
    TrainReply,
    check_client_info,
    parse_evaluate_reply,
    parse_train_reply,
)
from strategies.round import Round
from strategies.round_log import RoundLog
from strategies.stages import Compat, EvaluateWithTrain, FedProx, Stage, log_summary
from strategies.stragglers import RoundPolicy
from strategies.wire import record_wire_bytes

RoundCallback = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[int, ArrayRecord, dict[str, float]], None]
ReferenceFn = Callable[[int, "OrderedDict[str, np.ndarray]"], torch.Tensor]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class FlExtFedAvg(FedAvg):
    """Federated averaging with validated replies and capped weights.

    Parameters (keyword-only)
    -------------------------
    fraction_train, fraction_evaluate : share of connected nodes asked per round
        (``fraction_evaluate=0`` switches federated evaluation off).
    min_train_nodes, min_evaluate_nodes : fewer valid replies than this skip the round.
    min_available_nodes : nodes that must be connected before round 1 (bounded wait).
    max_examples_per_client : a reported count above this is rejected as absurd.
    weight_cap_factor : weights are capped at this multiple of the lower-median count; the
        default 2 bounds one liar's share near twice its fair 1/n (2/(n+1)) while honest
        clients up to twice the typical size keep their full weight.
    max_update_norm : an update (reply minus global model) with a larger L2 norm is rejected.
    seed : seeds node selection.
    byzantine : simulation only: designated Byzantine nodes and their attack.
    reference_update : ``(round, global arrays) -> flat update`` trained by the server on its
        root set, for rules that need it (FLTrust).
    aggregation : the rule (and pre-aggregation chain) applied to the updates; FedAvg's
        weighted mean by default. A round needs ``aggregation.min_inputs()`` valid updates.
    node_wait_timeout : seconds to wait for ``min_available_nodes`` before failing.
    privacy : client-level DP (Poisson sampling, clipping and noise replace selection and the
        rule; every round is released and accounted, even with few replies) or sample-level
        DP-SGD in the clients; either keeps the privacy ledger and stops training before a
        budget is exceeded (``stop_reason`` says why).
    selector : picks the training nodes each round from those eligible (seeded uniform by
        default); it sees the registry of per-node history the strategy keeps.
    stragglers : simulation of device/network heterogeneity on a virtual clock: availability,
        dropouts, over-selection, deadline, partial aggregation and the fallback.
    compression : codecs for client updates (and optionally the broadcast); their specs travel
        in the train messages and every payload is checked before it is decoded.
    proximal_mu : FedProx (Li et al., 2020): clients add ``mu/2 ||w - w_global||^2`` to their
        loss (the ``FedProx`` stage; 0 is FedAvg).
    stages : more stages, called after the built-in ones in each phase (``strategies.stages``).
    evaluate_with_train : federated evaluation without its own exchange: every trained
        client first evaluates the model it received and reports it with its update
        (``fed_eval_received_*``: the model the round started from). On a deployment this
        halves the exchanges per round; the separate evaluate round is then skipped.
    server_opt : a server optimizer (FedAvgM, FedAdam, FedYogi, FedAdagrad) applied to the
        aggregate update of any rule (or of the Gaussian mechanism); its state is checkpointed.
    early_stopping : ends the run when a round metric stopped improving (``stop_reason``).
    require_client_info : refuse replies without fl-ext's ``client-info`` (version, schema)
        and without ``train_loss``. None (default): only when a capability needs an fl-ext
        client (codecs, DP-SGD, client-side attacks); a plain Flower ClientApp works otherwise.
    target_accuracy : centralized test accuracy whose first attainment is logged as
        ``time_to_target_s`` (wall seconds of rounds so far) and, with the virtual clock,
        ``sim_time_to_target_s``.
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
    ) -> None:
        _check_settings(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            max_examples_per_client=max_examples_per_client,
            weight_cap_factor=weight_cap_factor,
            max_update_norm=max_update_norm,
            node_wait_timeout=node_wait_timeout,
            target_accuracy=target_accuracy,
        )
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
        aggregation = _as_pipeline(aggregation)
        self.aggregation = aggregation
        if aggregation.needs_reference and reference_update is None:
            raise ValueError(
                f"{aggregation.describe()} needs the server's own update each round "
                "(reference_update); give the dataset a root set (dataset.root_size)"
            )
        self.reference_update = reference_update
        self.aggregator_state = AggregatorState()  # explicit state of stateful rules
        self.byzantine = byzantine
        if byzantine is not None:
            byzantine.bind(self._attacker_view)
        self.train_selector = selector or UniformSelector(
            fraction=fraction_train, minimum=min_train_nodes, seed=seed
        )
        self.registry = ClientRegistry()
        self.stragglers = stragglers
        self.in_flight = InFlight()  # messages not waited for: their nodes are busy
        self.evaluate_selector = (
            UniformSelector(fraction=fraction_evaluate, minimum=min_evaluate_nodes, seed=seed + 1)
            if fraction_evaluate > 0
            else None
        )
        if privacy is not None:
            privacy.check_aggregation(aggregation)
        self.privacy = privacy
        self.compression = compression
        self.stop_reason: str | None = None
        self.current: Round | None = None  # the round being configured/aggregated
        self.bytes_down_cum = 0
        self.bytes_up_cum = 0
        self._schema = ""
        self.target_accuracy = target_accuracy
        self.evaluate_with_train = bool(evaluate_with_train)
        self.stages: list[Stage] = [
            Compat(),
            *([FedProx(proximal_mu=proximal_mu)] if proximal_mu else []),
            *([EvaluateWithTrain()] if self.evaluate_with_train else []),
            *stages,
        ]  # fmt: skip
        self.target_round: int | None = None  # first round at or above target_accuracy
        self.wall_time_s = 0.0  # sum of round times, across restarts
        self.incompatible: dict[int, str] = {}  # nodes refused for version/schema, and why
        self.server_opt = server_opt
        self.needs_client_info = (
            require_client_info
            if require_client_info is not None
            else compression is not None
            or isinstance(privacy, SampleLevelDP)
            or (byzantine is not None and byzantine.client_role is not None)
        )
        self.server_opt_state: dict[str, torch.Tensor] | None = None  # made at the first step
        self.early_stopping = early_stopping

    # ------------------------------------------------------------------ hooks
    def train_config_entries(self, rnd: Round) -> dict[str, Any]:
        """ConfigRecord entries every train message of the round carries (stages in order)."""
        entries: dict[str, Any] = {}
        for stage in self.stages:
            entries.update(stage.entries(rnd))
        if self.privacy is not None:
            entries.update(self.privacy.train_entries())
        if self.compression is not None:
            entries.update(self.compression.train_entries(rnd.number))
        return entries

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> %s", type(self).__name__)
        log(INFO, "\t│\t├── max examples per client: %s", self.max_examples_per_client)
        log(INFO, "\t│\t├── weight cap factor: %s", self.weight_cap_factor)
        log(INFO, "\t│\t├── max update norm: %s", self.max_update_norm)
        log(INFO, "\t│\t└── aggregation: %s", self.aggregation.describe())
        log_summary(self.stages)
        super().summary()

    def min_valid_replies(self) -> int:
        """Valid replies a round needs: ``min_train_nodes`` and the rule's own minimum."""
        return max(self.min_train_nodes, self.aggregation.min_inputs())

    def check_federation(self, num_nodes: int) -> None:
        """Raise ValueError if a round on ``num_nodes`` connected nodes can never aggregate."""
        asked = self.train_selector.sample_size(num_nodes)
        if asked < self.aggregation.min_inputs():
            raise ValueError(
                f"{self.aggregation.describe()} needs at least {self.aggregation.min_inputs()} "
                f"updates per round ({type(self.aggregation.rule).__name__}: "
                f"{self.aggregation.rule.requirement()}), but fraction_train="
                f"{self.fraction_train} of {num_nodes} nodes selects {asked}"
            )

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything the next round depends on: JSON-able part and array part.

        Selector histories and random generators, the registry, the clock, the stateful
        rule's center, privacy state (not the ledger: it persists itself; not the DP noise
        generator: it is reseeded), cumulative bytes. Client-side state (error-feedback
        residuals, DP-SGD histories) lives on the clients.
        """
        state: dict[str, Any] = {
            "train_selector": self.train_selector.state_dict(),
            "evaluate_selector": (
                self.evaluate_selector.state_dict() if self.evaluate_selector else {}
            ),
            "registry": self.registry.state_dict(),
            "aggregator_round": self.aggregator_state.round,
            "bytes_down_cum": self.bytes_down_cum,
            "bytes_up_cum": self.bytes_up_cum,
            "wall_time_s": self.wall_time_s,
            "target_round": self.target_round,
        }
        if self.stragglers is not None:
            state["stragglers"] = self.stragglers.state_dict()
        if self.privacy is not None:
            state["privacy"] = self.privacy.state_dict()
        if self.byzantine is not None:
            state["byzantine"] = self.byzantine.state_dict()
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state_dict()
        state["stages"] = {stage.name: stage.state_dict() for stage in self.stages}
        tensors = {}
        if self.aggregator_state.center is not None:
            tensors["aggregator_center"] = self.aggregator_state.center.cpu().numpy()
        for key, value in (self.server_opt_state or {}).items():
            tensors[f"server_opt.{key}"] = value.cpu().numpy()
        return state, tensors

    def load_state_dict(
        self, state: dict[str, Any], tensors: dict[str, np.ndarray], *, first_round: int
    ) -> None:
        """Restore :meth:`state_dict` output before running from ``first_round``."""
        self.train_selector.load_state_dict(state["train_selector"])
        if self.evaluate_selector is not None:
            self.evaluate_selector.load_state_dict(state["evaluate_selector"])
        self.registry.load_state_dict(state["registry"])
        center = tensors.get("aggregator_center")
        self.aggregator_state.load_state_dict(
            {
                "center": None if center is None else torch.from_numpy(center.copy()),
                "round": int(state["aggregator_round"]),
            }
        )
        self.bytes_down_cum = int(state["bytes_down_cum"])
        self.bytes_up_cum = int(state["bytes_up_cum"])
        self.wall_time_s = float(state.get("wall_time_s", 0.0))
        self.target_round = state.get("target_round")
        for name, part in (("stragglers", self.stragglers), ("byzantine", self.byzantine)):
            if part is not None and name in state:
                part.load_state_dict(state[name])
        if self.privacy is not None and "privacy" in state:
            self.privacy.load_state_dict(state["privacy"], first_round=first_round)
        if self.early_stopping is not None and "early_stopping" in state:
            self.early_stopping.load_state_dict(state["early_stopping"])
        saved = state.get("stages", {})
        for stage in self.stages:
            if stage.name in saved:
                stage.load_state_dict(saved[stage.name])
        opt = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("server_opt.")}
        if self.server_opt is not None and opt:
            self.server_opt_state = {k: torch.from_numpy(v.copy()) for k, v in opt.items()}

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select nodes and build one train message each; ``config`` is not modified."""
        rnd = self.current = Round.start(server_round, record_to_named(arrays))
        self._schema = rnd.schema
        available = list(grid.get_node_ids())
        if self.stragglers is not None:  # simulated availability: who is online this round
            available = [n for n in available if self.stragglers.online(n, server_round)]
        busy = self.in_flight.busy()
        available = [n for n in available if n not in self.incompatible and n not in busy]
        for stage in self.stages:
            available = stage.eligible(rnd, available)
        rnd.available = available
        eligible = self.privacy.select(available) if self.privacy is not None else available
        if isinstance(self.privacy, ClientLevelDP):
            selected = eligible  # Poisson sampling is the selection
            rnd.needed = len(selected)  # no over-selection: every sampled node is waited for
        elif len(eligible) < self.min_train_nodes:
            rnd.log.skipped = (
                f"{len(eligible)} nodes connected and eligible, min_train_nodes is "
                f"{self.min_train_nodes}"
            )
            log(WARNING, "Round %d skipped: %s", server_round, rnd.log.skipped)
            return []
        else:
            rnd.needed = self.train_selector.sample_size(len(eligible))
            count = (
                self.stragglers.asked(rnd.needed, len(eligible))
                if self.stragglers is not None
                else rnd.needed
            )
            selected = self.train_selector.select(
                eligible, registry=self.registry, server_round=server_round, count=count
            )
        self.registry.on_selected(selected)
        rnd.log.selected = selected
        if self.byzantine is not None:
            self.byzantine.designate(available)
        base = self.train_config_entries(rnd)
        sent = arrays
        if self.compression is not None:
            sent = self.compression.broadcast(arrays, server_round)
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for node in selected:
            entries = {**base, **self._node_entries(node, server_round)}
            groups.setdefault(tuple(sorted(entries.items())), []).append(node)
        messages: list[Message] = []
        for key, nodes in groups.items():
            record = self._record(sent, config, dict(key))
            nbytes = record_wire_bytes(record)
            rnd.log.bytes_down += nbytes * len(nodes)
            rnd.bytes_down.update(dict.fromkeys(nodes, nbytes))
            epochs = dict(key).get("local-epochs", config.get("local-epochs", 1))
            rnd.epochs.update(dict.fromkeys(nodes, int(epochs)))
            messages += self._construct_messages(record, nodes, MessageType.TRAIN)
        log(
            DEBUG,
            "configure_train: %d of %d nodes selected",
            len(rnd.log.selected),
            len(available),
        )
        return messages

    def _node_entries(self, node: int, server_round: int) -> dict[str, Any]:
        """Per-node train config: a Byzantine role (simulation), an adaptive codec tier."""
        entries: dict[str, Any] = {}
        if self.byzantine is not None:
            entries.update(self.byzantine.config_for(node))
        if self.compression is not None:
            entries.update(self.compression.node_entries(node, server_round))
        return entries

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, aggregate the valid updates, or skip the round."""
        rnd = self._require_round(server_round)
        spec, global_flat, rlog = rnd.spec, rnd.global_flat, rnd.log
        replies = list(replies)
        sizes = {id(m): record_wire_bytes(m.content) for m in replies if m.has_content()}
        if isinstance(self.privacy, SampleLevelDP):  # every client that trained spent privacy
            self.privacy.record(server_round, replies)
        clock = None
        if self.stragglers is not None:
            clock = self.stragglers.close(
                server_round,
                replies,
                needed=rnd.needed,
                asked=len(rlog.selected),
                bytes_down=rnd.bytes_down,
                epochs=rnd.epochs,
                bytes_up=sizes,
                measured=rnd.reply_seconds,
                in_flight=rnd.left_in_flight,
            )
        self._count_upload(clock.arrived if clock else replies, sizes)
        if clock is not None:
            replies = clock.kept
        updates, accepted = self._collect_updates(rnd, replies)
        self._update_registry(
            server_round, accepted, clock.durations if clock else rnd.reply_seconds
        )
        if clock is not None:
            rlog.clock = clock
            if clock.fallback is not None:
                rlog.skipped = clock.fallback
                log(WARNING, "ALERT round %d: %s", server_round, clock.fallback)

        self.aggregator_state.round = server_round
        if self.aggregation.needs_reference:  # before the attack: the attacker's view needs it
            assert self.reference_update is not None
            reference = self.reference_update(server_round, rnd.global_named)
            self.aggregator_state.reference = reference.to(updates.dtype)
        if self.byzantine is not None and self.byzantine.omniscient is not None:
            updates, accepted = self._inject_attack(updates, accepted)

        metrics = MetricRecord({"clients_valid": len(accepted)})
        if self.evaluate_with_train:
            metrics.update(self._received_evaluation(accepted))
        if isinstance(self.privacy, ClientLevelDP):
            delta = self.privacy.aggregate(
                server_round, updates[: len(accepted)], len(rnd.available)
            )
            delta = self._server_step(delta)
            return named_array_record(spec.unflatten(global_flat + delta)), metrics
        if rlog.skipped is None and len(accepted) < self.min_valid_replies():
            rlog.skipped = (
                f"{len(accepted)} valid replies; min_train_nodes is {self.min_train_nodes} and "
                f"{self.aggregation.describe()} needs {self.aggregation.min_inputs()}"
            )
            log(WARNING, "Round %d skipped, global model unchanged: %s", server_round, rlog.skipped)
        if rlog.skipped is not None:
            return None, metrics

        counts = np.array([r.num_examples for r in accepted], dtype=np.float64)
        weights = torch.from_numpy(capped_example_weights(counts, self.weight_cap_factor))
        delta = self.aggregation(updates[: len(accepted)], weights, self.aggregator_state)
        new_arrays = spec.unflatten(global_flat + self._server_step(delta))
        losses = [float(r.metrics["train_loss"]) for r in accepted if "train_loss" in r.metrics]
        if losses:
            metrics["train_loss"] = float(np.mean(losses))
        return named_array_record(new_arrays), metrics

    def _server_step(self, delta: torch.Tensor) -> torch.Tensor:
        """The step the global model takes: the aggregate, or the server optimizer's."""
        if self.server_opt is None:
            return delta
        if self.server_opt_state is None:
            self.server_opt_state = self.server_opt.init(delta)
        self.server_opt.check_state(self.server_opt_state, delta.numel())  # a restored state
        step, self.server_opt_state = self.server_opt.update(delta, self.server_opt_state)
        return step

    # --------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select nodes for federated evaluation (none when ``fraction_evaluate`` is 0)."""
        if not self._schema:  # called before any train round: the schema the replies must match
            self._schema = schema_hash(record_to_named(arrays))
        if self.evaluate_with_train:
            return []  # the clients evaluated with their train replies
        busy = self.in_flight.busy()
        available = [n for n in grid.get_node_ids() if n not in busy and n not in self.incompatible]
        if self.evaluate_selector is None or len(available) < self.min_evaluate_nodes:
            return []
        selected = self.evaluate_selector.select(available)
        self.round_log.eval_selected = len(selected)
        record = self._record(arrays, config, Compat.entries_for(server_round, self._schema))
        self.round_log.bytes_down += record_wire_bytes(record) * len(selected)
        return self._construct_messages(record, selected, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted (capped) mean of valid clients' loss and accuracy."""
        rlog = self.round_log
        accepted: list[EvaluateReply] = []
        for msg in replies:
            if msg.has_content():
                rlog.bytes_up += record_wire_bytes(msg.content)
            if msg.has_error():
                rlog.eval_failed += 1
                if msg.error.code == INCOMPATIBLE:
                    self._mark_incompatible(msg.metadata.src_node_id, msg.error.reason or "")
                continue
            rlog.eval_replied += 1
            parsed = self._check_info(msg) or parse_evaluate_reply(
                msg, max_examples=self.max_examples_per_client
            )
            if isinstance(parsed, Rejection):
                rlog.eval_rejected += 1
                log(
                    WARNING,
                    "\t> evaluate reply from node %d rejected: %s",
                    msg.metadata.src_node_id,
                    parsed,
                )
                continue
            accepted.append(parsed)
        if not accepted or len(accepted) < self.min_evaluate_nodes:
            return None
        return MetricRecord(
            self._weighted(
                [r.num_examples for r in accepted],
                {key: [float(r.metrics[key]) for r in accepted] for key in ("loss", "accuracy")},
            )
        )

    def _received_evaluation(
        self, accepted: list[TrainReply]
    ) -> dict[str, int | float | list[int] | list[float]]:
        """Loss/accuracy the trained clients reported for the model they received.

        Weighted by capped example counts (``evaluate_with_train``); empty below
        ``min_evaluate_nodes`` reports.
        """
        rows = [r for r in accepted if "eval-num-examples" in r.metrics]
        if len(rows) < self.min_evaluate_nodes:
            return {}
        return self._weighted(
            [int(r.metrics["eval-num-examples"]) for r in rows],
            {
                f"fed_eval_received_{key}": [float(r.metrics[f"eval-{key}"]) for r in rows]
                for key in ("loss", "accuracy")
            },
        )

    def _weighted(
        self, counts: list[int], values: dict[str, list[float]]
    ) -> dict[str, int | float | list[int] | list[float]]:
        """Mean of each value list, weighted by the capped reported example counts."""
        weights = capped_example_weights(np.array(counts, dtype=np.float64), self.weight_cap_factor)
        weights = weights / weights.sum()
        return {k: float(np.dot(weights, np.array(v))) for k, v in values.items()}

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
        """Flower's round loop, plus a bounded wait for nodes, timing and ``on_round_end``.

        ``on_round_end(round, metrics)`` receives everything about the round in one flat
        dict (centralized and federated evaluation, counters, bytes, times) so a tracker
        can log it in one batch. Round 0 reports the initial centralized evaluation.
        ``checkpoint_fn(round, arrays, metrics)`` runs before ``on_round_end``, so a round is
        saved before it is reported. ``first_round > 1`` continues a restored run (state
        loaded with :meth:`load_state_dict`): rounds ``first_round..num_rounds`` run.
        ``should_stop()`` is asked before each round; a reason it returns ends the loop
        there (``stop_reason``), e.g. the run was stopped with ``flwr stop``.
        """
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        if not 1 <= first_round <= num_rounds:
            raise ValueError(
                f"first_round must be in [1, num_rounds={num_rounds}], got {first_round}"
            )
        log(INFO, "Starting %s", type(self).__name__)
        self.summary()
        wait_for_nodes(grid, self.min_available_nodes, timeout=self.node_wait_timeout, settle=0)
        phases = _Phases(
            grid=grid,
            timeout=timeout,
            train_config=train_config if train_config is not None else ConfigRecord(),
            evaluate_config=evaluate_config if evaluate_config is not None else ConfigRecord(),
            evaluate_fn=evaluate_fn,
            result=Result(arrays=initial_arrays),
        )
        notify = on_round_end or (lambda _round, _metrics: None)
        self.in_flight = InFlight(max_age_s=2 * timeout)  # a silent node is retried after that
        t_start = time.monotonic()
        initial = phases.central(0, initial_arrays) if first_round == 1 else {}
        if initial:
            log(
                INFO,
                "Initial model: test acc %.4f loss %.4f",
                initial.get("test_accuracy", float("nan")),
                initial.get("test_loss", float("nan")),
            )
            notify(0, initial)
        progress = RunSummary(first_round=first_round, num_rounds=num_rounds)
        for server_round in range(first_round, num_rounds + 1):
            if self.privacy is not None:
                self.stop_reason = self.privacy.stop_reason(server_round, list(grid.get_node_ids()))
                if self.stop_reason is not None:
                    log(WARNING, "Training stopped: %s", self.stop_reason)
                    break
            if should_stop is not None and (reason := should_stop()) is not None:
                self.stop_reason = reason  # e.g. the run was stopped on the SuperLink
                log(WARNING, "Training stopped: %s", reason)
                break
            log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
            metrics = self._run_round(server_round, phases)
            progress.add(server_round, metrics)
            log(
                INFO,
                "Round %d/%d: %s",
                server_round,
                num_rounds,
                progress_line(metrics, eta_s=progress.eta_s(server_round)),
            )
            if self.early_stopping is not None:  # before the checkpoint: its state is saved
                self.stop_reason = self.early_stopping.update(server_round, metrics)
            if checkpoint_fn is not None:
                checkpoint_fn(server_round, phases.result.arrays, metrics)
            notify(server_round, metrics)
            if self.stop_reason is not None:
                log(WARNING, "Training stopped after round %d: %s", server_round, self.stop_reason)
                break
        log(INFO, "Finished: %s", progress.line(self.stop_reason))
        log(DEBUG, "Strategy finished in %.2fs", time.monotonic() - t_start)
        return phases.result

    def _run_round(self, server_round: int, phases: _Phases) -> dict[str, float]:
        """Train, evaluate (federated, then centralized) and collect the round's metrics."""
        result, grid = phases.result, phases.grid
        t_round = time.monotonic()
        messages = self.configure_train(server_round, result.arrays, phases.train_config, grid)
        enough, limit = (
            self.stragglers.exchange_limits(self._needed(), phases.timeout)
            if self.stragglers is not None
            else (None, phases.timeout)
        )
        trained = exchange(grid, messages, timeout=limit, enough=enough, in_flight=self.in_flight)
        if self.current is not None:
            self.current.reply_seconds = trained.by_node()
            self.current.left_in_flight = trained.left_in_flight
        self._drained(trained.drained)
        new_arrays, train_metrics = self.aggregate_train(server_round, trained.replies)
        t_train = time.monotonic() - t_round
        metrics: dict[str, float] = {}
        if new_arrays is not None:
            result.arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
            metrics.update(_scalars("", train_metrics))
        evaluated = exchange(
            grid,
            self.configure_evaluate(server_round, result.arrays, phases.evaluate_config, grid),
            timeout=phases.timeout,
            in_flight=self.in_flight,
        )
        self._drained(evaluated.drained)
        fed_metrics = self.aggregate_evaluate(server_round, evaluated.replies)
        if fed_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = fed_metrics
            metrics.update(_scalars("fed_eval_", fed_metrics))
        metrics.update(phases.central(server_round, result.arrays))
        rlog = self.round_log
        self.bytes_down_cum += rlog.bytes_down
        self.bytes_up_cum += rlog.bytes_up
        metrics.update(rlog.metrics())
        metrics.update(trained.metrics("train_"))
        if self.privacy is not None:
            metrics.update(self.privacy.metrics())
        if self.compression is not None:
            metrics.update(self.compression.metrics())
        if self.current is not None:
            for stage in self.stages:
                metrics.update(stage.metrics(self.current))
        if self.stragglers is not None and self.stragglers.simulated:
            metrics["sim_time_s"] = self.stragglers.sim_time_s
        round_time = time.monotonic() - t_round
        self.wall_time_s += round_time
        metrics.update(
            bytes_down_cum=self.bytes_down_cum,
            bytes_up_cum=self.bytes_up_cum,
            train_time_s=t_train,
            round_time_s=round_time,
            wall_time_s=self.wall_time_s,
        )
        self._check_target(server_round, metrics)
        return metrics

    def _check_target(self, server_round: int, metrics: dict[str, float]) -> None:
        """Time to accuracy: logged once, at the first round reaching ``target_accuracy``."""
        accuracy = metrics.get("test_accuracy")
        if self.target_accuracy is None or self.target_round is not None or accuracy is None:
            return
        if accuracy >= self.target_accuracy:
            self.target_round = server_round
            metrics["time_to_target_s"] = self.wall_time_s
            if self.stragglers is not None and self.stragglers.simulated:
                metrics["sim_time_to_target_s"] = self.stragglers.sim_time_s
            log(
                INFO,
                "Target accuracy %.3f reached in round %d (%.1f s wall%s)",
                self.target_accuracy,
                server_round,
                self.wall_time_s,
                f", {self.stragglers.sim_time_s:.1f} s simulated"
                if self.stragglers is not None and self.stragglers.simulated
                else "",
            )

    # --------------------------------------------------------------- helpers
    def _record(
        self, arrays: ArrayRecord, config: ConfigRecord, extra: dict[str, Any]
    ) -> RecordDict:
        merged = ConfigRecord({**dict(config), **extra})  # a copy: the caller's is untouched
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: merged})

    @property
    def round_log(self) -> RoundLog:
        """The current round's log (an empty one before the first round)."""
        return self.current.log if self.current is not None else RoundLog(0)

    def _needed(self) -> int:
        return self.current.needed if self.current is not None else 0

    def _require_round(self, server_round: int) -> Round:
        if self.current is None or self.current.number != server_round:
            raise RuntimeError(
                f"aggregate_train of round {server_round} called before its configure_train"
            )
        return self.current

    def _parse_train(
        self, msg: Message, node_id: int, seen: set[int], spec: ParamSpec
    ) -> TrainReply | Rejection:
        if node_id not in self.round_log.selected or node_id in seen:
            return Rejection(RejectReason.MALFORMED, "reply from a node not selected or duplicated")
        seen.add(node_id)
        rejection = self._check_info(msg)
        if rejection is not None:
            self._mark_incompatible(node_id, rejection.detail)
            return rejection
        return parse_train_reply(
            msg,
            spec,
            max_examples=self.max_examples_per_client,
            required_metrics=("train_loss",) if self.needs_client_info else (),
            codec=self.compression.uplink_for(node_id) if self.compression is not None else None,
        )

    def _check_info(self, msg: Message) -> Rejection | None:
        """The fl-ext version/schema check, when the client offers it or a capability needs it.

        A plain Flower ClientApp (no ``client-info``) takes part in everything that needs no
        fl-ext client; its replies still pass every other check (record shape, counts, norms).
        """
        if not self.needs_client_info and CLIENT_INFO not in msg.content.config_records:
            return None
        return check_client_info(msg, __version__, self._schema)

    def _inject_attack(
        self, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        """Replace the Byzantine nodes' rows by crafted updates, then check those like any reply."""
        assert self.byzantine is not None
        byz = [i for i, r in enumerate(accepted) if self.byzantine.is_byzantine(r.node_id)]
        honest = [i for i, r in enumerate(accepted) if not self.byzantine.is_byzantine(r.node_id)]
        self.round_log.byzantine = len(byz)
        if not byz or not honest:
            return updates, accepted
        crafted = self.byzantine.craft(updates[honest], len(byz))
        keep = list(honest)
        for row, i in zip(crafted, byz, strict=True):
            updates[i] = row
            finite = bool(torch.isfinite(row).all())
            norm = update_norm(row) if finite else float("nan")
            rejection = check_update_norm(norm, self.max_update_norm)
            if rejection:
                self._reject(accepted[i].node_id, rejection)
            else:
                keep.append(i)
        keep.sort()
        return updates[keep], [accepted[i] for i in keep]

    def _attacker_view(self, stacked: torch.Tensor) -> torch.Tensor:
        """The server's aggregation as an omniscient attacker evaluates it (state untouched)."""
        state = AggregatorState(
            center=self.aggregator_state.center,
            reference=self.aggregator_state.reference,
            round=self.aggregator_state.round,
        )
        return self.aggregation(stacked, None, state)

    def _collect_updates(
        self, rnd: Round, replies: list[Message]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        """Check every reply; rows ``[:len(accepted)]`` of the result are the valid updates."""
        spec, global_flat = rnd.spec, rnd.global_flat
        rlog = rnd.log
        updates = torch.empty((len(replies), spec.size), dtype=torch.float32)
        accepted: list[TrainReply] = []
        seen: set[int] = set()
        for msg in replies:
            node_id = msg.metadata.src_node_id
            if msg.has_error():
                rlog.failed += 1
                if msg.error.code == INCOMPATIBLE:
                    self._mark_incompatible(node_id, msg.error.reason or "")
                elif isinstance(self.privacy, SampleLevelDP) and msg.error.code == DECLINED:
                    self.privacy.declined(node_id, msg.error.reason or "")
                else:
                    log(INFO, "\t> node %d failed: %s", node_id, msg.error.reason)
                continue
            rlog.replied += 1
            parsed = self._parse_train(msg, node_id, seen, spec)
            if isinstance(parsed, TrainReply) and isinstance(self.privacy, SampleLevelDP):
                parsed = self.privacy.check_reply(parsed) or parsed
            if isinstance(parsed, TrainReply):
                parsed = self._stage_check(rnd, parsed)
            if isinstance(parsed, TrainReply):
                row = updates[len(accepted)]
                if UPDATE_KEY in parsed.arrays:  # a decoded codec payload: already the update
                    row.copy_(torch.from_numpy(parsed.arrays[UPDATE_KEY]))
                else:
                    spec.flatten(parsed.arrays, out=row).sub_(global_flat)
                parsed = check_update_norm(update_norm(row), self.max_update_norm) or parsed
            if isinstance(parsed, Rejection):
                self._reject(node_id, parsed)
                continue
            accepted.append(parsed)
        return updates, accepted

    def _stage_check(self, rnd: Round, reply: TrainReply) -> TrainReply | Rejection:
        """The first stage that rejects the reply, in stage order."""
        for stage in self.stages:
            rejection = stage.check(rnd, reply)
            if rejection is not None:
                return rejection
        return reply

    def _count_upload(self, received: list[Message], sizes: dict[int, int]) -> None:
        """Bytes of the replies that reached the server (``sizes`` by ``id(reply)``)."""
        for msg in received:
            nbytes = sizes.get(id(msg))
            if nbytes is None:
                continue
            self.round_log.bytes_up += nbytes
            if isinstance(self.compression, AdaptiveCompression):
                self.compression.record_upload(msg.metadata.src_node_id, nbytes)

    def _update_registry(
        self, server_round: int, accepted: list[TrainReply], durations: dict[int, float]
    ) -> None:
        """Utility and speed of the nodes that delivered; a failure for the other selected.

        ``durations``: simulated round times (the clock's), else the measured reply times
        (push to pull, see ``strategies.exchange``), else the reported compute time.
        """
        done = set()
        for r in accepted:
            loss = r.metrics.get("train_loss")  # absent from a plain Flower client's reply
            time_s = durations.get(r.node_id, r.metrics.get("compute_time_s"))
            self.registry.on_result(
                r.node_id,
                server_round,
                loss=float(loss) if isinstance(loss, (int, float)) and loss >= 0 else None,
                num_examples=r.num_examples,
                duration_s=float(time_s) if isinstance(time_s, (int, float)) else None,
            )
            done.add(r.node_id)
        for node in self.round_log.selected:
            if node not in done:
                self.registry.on_failure(node)
                if node in durations:
                    self.registry.on_duration(node, durations[node])

    def _drained(self, late: list[tuple[int, float]]) -> None:
        """Replies of earlier rounds that came after their round closed: speed still counts."""
        self.round_log.late_drained += len(late)
        for node, seconds in late:
            self.registry.on_duration(node, seconds)

    def _mark_incompatible(self, node_id: int, reason: str) -> None:
        """Not selected again in this run: its version or model cannot take part."""
        if node_id not in self.incompatible:
            log(
                WARNING, "\t> node %d is incompatible and will not be selected: %s", node_id, reason
            )
        self.incompatible[node_id] = reason

    def _reject(self, node_id: int, rejection: Rejection) -> None:
        self.round_log.rejected[rejection.reason.value] += 1
        log(WARNING, "\t> reply from node %d rejected: %s", node_id, rejection)


def _as_pipeline(aggregation: RobustAggregation | Aggregator | None) -> RobustAggregation:
    """FedAvg's weighted mean by default; a bare rule becomes a pipeline without pre-steps."""
    if aggregation is None:
        aggregation = WeightedMean()
    if isinstance(aggregation, Aggregator):
        aggregation = RobustAggregation(rule=aggregation)
    if not isinstance(aggregation, RobustAggregation):
        raise ValueError(
            f"aggregation must be an Aggregator or RobustAggregation, got {aggregation!r}"
        )
    return aggregation


def _check_settings(
    *,
    fraction_train: float,
    fraction_evaluate: float,
    min_train_nodes: int,
    min_evaluate_nodes: int,
    min_available_nodes: int,
    max_examples_per_client: int | None,
    weight_cap_factor: float | None,
    max_update_norm: float | None,
    node_wait_timeout: float,
    target_accuracy: float | None,
) -> None:
    """Reject impossible strategy settings with a message naming the value and the range."""
    _check_range("fraction_train", fraction_train, 0.0, 1.0, low_open=True)
    if target_accuracy is not None:
        _check_range("target_accuracy", target_accuracy, 0.0, 1.0, low_open=True)
    _check_range("fraction_evaluate", fraction_evaluate, 0.0, 1.0)
    for name, value in (
        ("min_train_nodes", min_train_nodes),
        ("min_evaluate_nodes", min_evaluate_nodes),
        ("min_available_nodes", min_available_nodes),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if min_available_nodes < min_train_nodes:
        raise ValueError(
            f"min_available_nodes ({min_available_nodes}) must be >= min_train_nodes "
            f"({min_train_nodes})"
        )
    if max_examples_per_client is not None and max_examples_per_client < 1:
        raise ValueError(
            f"max_examples_per_client must be >= 1 or null, got {max_examples_per_client}"
        )
    if weight_cap_factor is not None and not weight_cap_factor >= 1:
        raise ValueError(f"weight_cap_factor must be >= 1 or null, got {weight_cap_factor}")
    if max_update_norm is not None and not max_update_norm > 0:
        raise ValueError(f"max_update_norm must be > 0 or null, got {max_update_norm}")
    if not node_wait_timeout > 0:
        raise ValueError(f"node_wait_timeout must be > 0, got {node_wait_timeout}")


def _check_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False
) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


@dataclass
class _Phases:
    """What every round of one ``start`` call shares."""

    grid: Grid
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
        return _scalars("test_", record)


def _scalars(prefix: str, record: MetricRecord) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in record.items() if not isinstance(v, list)}
