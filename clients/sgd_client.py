"""Local SGD client (FedAvg), with FedProx's proximal term when the server asks for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from torch import nn

from fl_ext.attacks import ROLE_KEY, flip_labels, malform
from fl_ext.data.datasets import ArrayDataset
from fl_ext.params import get_weights, set_weights
from fl_ext.training import Forward, TrainConfig, evaluate, seed_for, train_local


class SgdClient(NumPyClient):
    """Trains ``model`` on its partition; config keys come from the server's ConfigRecord.

    Train keys: ``local-epochs``, ``lr``, ``momentum``, ``batch-size``, ``proximal-mu``
    (FedProx; 0 means FedAvg), ``seed``, ``server-round``; in simulation, ``attack-role``
    makes this client Byzantine (``label_flip`` or a malformed reply, see fl_ext.attacks).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        train: ArrayDataset,
        test: ArrayDataset,
        partition_id: int = 0,
        data_hash: str = "",
        make_forward: Callable[[int], Forward] | None = None,
        max_width: float | None = None,
    ) -> None:
        self.model = model
        self.train = train
        self.test = test
        self.partition_id = partition_id
        self.data_hash = data_hash  # reported with every reply (client-info): the data version
        self.make_forward = make_forward  # seed -> per-batch forward (ordered dropout)
        self.max_width = max_width  # reported with every reply: the widest sub-model it holds

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return list(get_weights(self.model).values())

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        set_weights(self.model, parameters)
        cfg = self.train_config(config)
        role = str(config.get(ROLE_KEY, "")) or None  # simulation only: a Byzantine client's role
        data = self.train
        if role == "label_flip":
            data = ArrayDataset(self.train.x, flip_labels(self.train.y, self.model_classes()))
        started = time.perf_counter()
        forward = self.make_forward(cfg.seed) if self.make_forward is not None else None
        stats = train_local(self.model, data, cfg, forward=forward)
        metrics = {"train_loss": stats.loss, "compute_time_s": time.perf_counter() - started}
        params = self.get_parameters({})
        if role is not None and role != "label_flip":
            params = malform(params, role)
        return params, stats.num_examples, metrics

    def train_config(self, config: dict[str, Any]) -> TrainConfig:
        """Local training settings from the server's ConfigRecord (seeded per round and client)."""
        return TrainConfig(
            epochs=int(config.get("local-epochs", 1)),
            batch_size=int(config.get("batch-size", 32)),
            lr=float(config.get("lr", 0.05)),
            momentum=float(config.get("momentum", 0.0)),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            seed=seed_for(
                int(config.get("seed", 0)), int(config.get("server-round", 0)), self.partition_id
            ),
        )

    def model_classes(self) -> int:
        """Number of classes of the model's output layer."""
        return int(getattr(self.model, "num_classes", int(self.train.y.max()) + 1))

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        set_weights(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.test)
        return loss, len(self.test), {"accuracy": accuracy}
