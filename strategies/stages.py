"""Stages: capabilities the round engine calls in one fixed phase order, through the ``Round``.

A stage overrides only the hooks it needs; every hook has a no-op default. Stages never call
each other: what one decides reaches the others through the :class:`~strategies.round.Round`
(its fields and its log). The engine calls, per round and in this order:

1. ``eligible(rnd, nodes)``: filter the nodes a round may ask (compatibility, quarantine,
   availability, budget, policy);
2. ``entries(rnd)``: ConfigRecord entries every train message of the round carries;
3. ``check(rnd, reply)``: a typed :class:`~fl_ext.validation.Rejection` for a parsed reply,
   or None (never raise);
4. ``metrics(rnd)``: the stage's figures for the round;

and ``state_dict()`` / ``load_state_dict(state)`` for checkpoints (``{stage name: state}``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from flwr.supercore import log

from fl_ext import __version__
from fl_ext.compat import EVALUATE_RECEIVED, SCHEMA_KEY, VERSION_KEY
from fl_ext.validation import Rejection
from strategies.replies import TrainReply
from strategies.round import Round

ConfigValue = int | float | str | bool


class Stage:
    """No-op hooks; subclasses override what they need (see the module docstring)."""

    name: ClassVar[str] = "stage"

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        return nodes

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        return {}

    def check(self, rnd: Round, reply: TrainReply) -> Rejection | None:
        return None

    def metrics(self, rnd: Round) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (nothing for a stateless stage)."""

    def summary(self) -> str | None:
        """One line for the strategy's start-up summary, or None."""
        return None


class Compat(Stage):
    """Round, server version and model schema in every message.

    Clients refuse what they cannot serve (error code 4002).
    """

    name = "compat"

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        return self.entries_for(rnd.number, rnd.schema)

    @staticmethod
    def entries_for(server_round: int, schema: str) -> dict[str, ConfigValue]:
        """The entries of a message of ``server_round`` for a model of ``schema``."""
        return {"server-round": server_round, VERSION_KEY: __version__, SCHEMA_KEY: schema}


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

    They report it as ``fed_eval_received_*``; the round's evaluate exchange is skipped.
    """

    name = "evaluate_with_train"

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        return {EVALUATE_RECEIVED: True}


def log_summary(stages: list[Stage]) -> None:
    """The stages' lines of the start-up summary."""
    for stage in stages:
        line = stage.summary()
        if line:
            log(20, "\t├──> %s", line)
