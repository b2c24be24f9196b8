"""DP-SGD client (Opacus), with its privacy history persisted in the node's ``context.state``.

Train keys (besides SgdClient's): ``dp-max-grad-norm``, ``dp-delta``, ``dp-accountant``,
``dp-target-epsilon`` (0 = none), ``dp-noise-multiplier`` (< 0: calibrate for
``dp-planned-rounds``), ``dp-grad-sample-mode`` and ``dp-spent`` (the server ledger's history
for every client, JSON, so a restarted run -- fresh ``context.state`` -- goes on from what was
spent). Reply metrics: ``dp-client`` (partition id), ``dp-noise-multiplier``,
``dp-sample-rate``, ``dp-steps`` and ``dp-epsilon`` (this client's sample-level epsilon so far).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from clients.sgd_client import SgdClient
from fl_ext.params import set_weights
from fl_ext.privacy import GaussianSteps, compute_epsilon
from fl_ext.privacy.dp_sgd import DpSgdConfig, noise_for, round_plan, train_dp_sgd

STATE_KEY = "dp-sgd"


def dp_config(config: dict[str, Any]) -> DpSgdConfig:
    """The DP-SGD parameters a train message carries."""
    target = float(config.get("dp-target-epsilon", 0.0))
    sigma = float(config.get("dp-noise-multiplier", -1.0))
    return DpSgdConfig(
        max_grad_norm=float(config["dp-max-grad-norm"]),
        delta=float(config["dp-delta"]),
        accountant=str(config.get("dp-accountant", "rdp")),
        target_epsilon=target if target > 0 else None,
        noise_multiplier=sigma if sigma >= 0 else None,
        planned_rounds=int(config.get("dp-planned-rounds", 1)),
        grad_sample_mode=str(config.get("dp-grad-sample-mode", "fused")),
    )


def _total_steps(history: list[GaussianSteps]) -> int:
    return sum(h.steps for h in history)


def client_history(state: RecordDict, config: dict[str, Any], client: str) -> list[GaussianSteps]:
    """The client's spend so far: its own (``state``) or the server ledger's, the longer one.

    ``dp-spent`` (the ledger's history of every client, JSON) lets a restarted run -- fresh
    ``context.state`` -- go on from what was spent.
    """
    local: list[GaussianSteps] = []
    if STATE_KEY in state:
        raw = state[STATE_KEY]
        assert isinstance(raw, ConfigRecord)
        local = [GaussianSteps.from_list(e) for e in json.loads(str(raw["history"]))]
    spent = json.loads(str(config.get("dp-spent", "{}"))).get(client, [])
    server = [GaussianSteps.from_list(e) for e in spent]
    return server if _total_steps(server) > _total_steps(local) else local


def save_history(state: RecordDict, history: list[GaussianSteps]) -> None:
    """Persist the client's spend in the node's ``context.state``."""
    state[STATE_KEY] = ConfigRecord({"history": json.dumps([h.as_list() for h in history])})


class DpSgdClient(SgdClient):
    """SgdClient whose local training is DP-SGD; see the module docstring."""

    def __init__(self, *, state: RecordDict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state

    def _history(self, config: dict[str, Any]) -> list[GaussianSteps]:
        return client_history(self.state, config, str(self.partition_id))

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        set_weights(self.model, parameters)
        dp = dp_config(config)
        train = self.train_config(config)
        if train.proximal_mu > 0:
            raise ValueError("DP-SGD clients do not train with FedProx's proximal term")
        history = self._history(config)
        q, steps = round_plan(len(self.train), train.batch_size, train.epochs)
        sigma = noise_for(dp, q, steps)
        started = time.perf_counter()
        stats, entry = train_dp_sgd(
            self.model, self.train, train=train, dp=dp, history=history, noise_multiplier=sigma
        )
        history.append(entry)
        save_history(self.state, history)
        metrics = {
            "train_loss": stats.loss,
            "compute_time_s": time.perf_counter() - started,
            "dp-client": self.partition_id,
            "dp-noise-multiplier": entry.noise_multiplier,
            "dp-sample-rate": entry.sample_rate,
            "dp-steps": entry.steps,
            "dp-epsilon": compute_epsilon(history, dp.delta, dp.accountant),
        }
        return self.get_parameters({}), stats.num_examples, metrics
