"""Small stages: compatibility, FedProx, evaluation with training, early stopping, target.

The hooks and their phase order are in :mod:`strategies.stage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO, WARNING
from typing import Any

from flwr.app import Message, MessageType
from flwr.supercore import log

from fl_ext import __version__
from fl_ext.compat import CLIENT_INFO, EVALUATE_RECEIVED, INCOMPATIBLE, SCHEMA_KEY, VERSION_KEY
from fl_ext.early_stopping import EarlyStopping
from fl_ext.validation import Rejection
from strategies.evaluation import weighted_means
from strategies.replies import TrainReply, check_client_info
from strategies.round import Round
from strategies.stage import ConfigValue, Stage

__all__ = ["Compat", "EarlyStop", "EvaluateWithTrain", "FedProx", "Stage", "TargetAccuracy"]


class Compat(Stage):
    """Round, server version and model schema in every message; incompatible nodes left out.

    Clients refuse what they cannot serve (error code 4002); a reply's ``client-info`` is
    checked when the client offers it, or always with ``require_client_info`` (what needs an
    fl-ext client: codecs, DP-SGD, client-side attacks). A node found incompatible is not
    asked again in this run.
    """

    name = "compat"

    def __init__(self, *, require_client_info: bool = False) -> None:
        self.require_client_info = bool(require_client_info)
        self.incompatible: dict[int, str] = {}  # node -> why

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        return self.eligible_to_evaluate(nodes)

    def eligible_to_evaluate(self, nodes: list[int]) -> list[int]:
        return [n for n in nodes if n not in self.incompatible]

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        return self.entries_for(rnd.number, rnd.schema)

    @staticmethod
    def entries_for(server_round: int, schema: str) -> dict[str, ConfigValue]:
        """The entries of a message of ``server_round`` for a model of ``schema``."""
        return {"server-round": server_round, VERSION_KEY: __version__, SCHEMA_KEY: schema}

    def on_error(self, rnd: Round, node: int, code: int, reason: str) -> bool:
        if code != INCOMPATIBLE:
            return False
        self.mark(node, reason)
        return True

    def check_message(self, rnd: Round | None, msg: Message) -> Rejection | None:
        if rnd is None or (
            not self.require_client_info and CLIENT_INFO not in msg.content.config_records
        ):
            return None  # a plain Flower ClientApp: every other check still applies
        node = msg.metadata.src_node_id
        trained_view = msg.metadata.message_type.startswith(MessageType.TRAIN)
        schema = rnd.schema_for(node) if trained_view else rnd.schema  # evaluation: all of it
        rejection = check_client_info(msg, __version__, schema)
        if rejection is not None:
            self.mark(msg.metadata.src_node_id, rejection.detail)
        return rejection

    def mark(self, node: int, reason: str) -> None:
        """Not selected again in this run: its version or model cannot take part."""
        if node not in self.incompatible:
            log(WARNING, "\t> node %d is incompatible and will not be selected: %s", node, reason)
        self.incompatible[node] = reason


class FedProx(Stage):
    """FedProx (Li et al., 2020): clients add ``mu/2 ||w - w_global||^2`` to their loss.

    Its one effect on the server is the ``proximal-mu`` entry of every train message.
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01) -> None:
        if not (isinstance(proximal_mu, int | float) and proximal_mu >= 0):
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu!r}")
        self.proximal_mu = float(proximal_mu)

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        return {"proximal-mu": self.proximal_mu}

    def summary(self) -> str:
        return f"FedProx, proximal mu {self.proximal_mu:g}"


class EvaluateWithTrain(Stage):
    """Trained clients evaluate the model they received, in their train reply.

    They report it as ``eval-*`` metrics; the stage reports their capped-weight means as
    ``fed_eval_received_*`` (the model the round started from), and the round's evaluate
    exchange is skipped: on a deployment that halves the exchanges per round.
    """

    name = "evaluate_with_train"

    def __init__(self, *, min_nodes: int = 1, weight_cap_factor: float | None = 2.0) -> None:
        self.min_nodes, self.weight_cap_factor = int(min_nodes), weight_cap_factor
        self.received: dict[str, float] = {}

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        return {EVALUATE_RECEIVED: True}

    def on_accepted(self, rnd: Round, accepted: list[TrainReply]) -> None:
        rows = [r for r in accepted if "eval-num-examples" in r.metrics]
        self.received = {}
        if len(rows) >= self.min_nodes:
            self.received = weighted_means(
                [int(r.metrics["eval-num-examples"]) for r in rows],
                {
                    f"fed_eval_received_{key}": [float(r.metrics[f"eval-{key}"]) for r in rows]
                    for key in ("loss", "accuracy")
                },
                self.weight_cap_factor,
            )

    def metrics(self, rnd: Round) -> dict[str, float]:
        return self.received


class EarlyStop(Stage):
    """Ends the run when a round metric stopped improving (:class:`fl_ext.early_stopping`)."""

    name = "early_stopping"

    def __init__(self, monitor: EarlyStopping) -> None:
        self.monitor = monitor

    def after_round(self, server_round: int, metrics: dict[str, float]) -> str | None:
        return self.monitor.update(server_round, metrics)

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.monitor.load_state_dict(state)

    def summary(self) -> str:
        m = self.monitor
        return f"early stopping on {m.metric}: patience {m.patience}, min delta {m.min_delta:g}"


class TargetAccuracy(Stage):
    """Time to accuracy: logged once, at the first round reaching ``target`` test accuracy.

    ``time_to_target_s`` (wall seconds of rounds so far) and, with a virtual clock,
    ``sim_time_to_target_s``.
    """

    name = "target_accuracy"

    def __init__(self, target: float) -> None:
        self.target = float(target)
        self.reached: int | None = None  # the first round at or above the target

    def after_round(self, server_round: int, metrics: dict[str, float]) -> str | None:
        accuracy = metrics.get("test_accuracy")
        if self.reached is not None or accuracy is None or accuracy < self.target:
            return None
        self.reached = server_round
        metrics["time_to_target_s"] = metrics.get("wall_time_s", 0.0)
        sim = metrics.get("sim_time_s")
        if sim is not None:
            metrics["sim_time_to_target_s"] = sim
        log(
            INFO,
            "Target accuracy %.3f reached in round %d (%.1f s wall%s)",
            self.target,
            server_round,
            metrics["time_to_target_s"],
            f", {sim:.1f} s simulated" if sim is not None else "",
        )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"reached": self.reached}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.reached = state.get("reached")


def log_summary(stages: Sequence[Stage]) -> None:
    """The stages' lines of the start-up summary."""
    for stage in stages:
        line = stage.summary()
        if line:
            log(INFO, "\t├──> %s", line)
