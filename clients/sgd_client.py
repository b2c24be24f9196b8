"""Local SGD client (FedAvg), with FedProx's proximal term when the server asks for it."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from torch import nn

from fl_ext.data.datasets import ArrayDataset
from fl_ext.params import get_weights, set_weights
from fl_ext.training import TrainConfig, evaluate, seed_for, train_local


class SgdClient(NumPyClient):
    """Trains ``model`` on its partition; config keys come from the server's ConfigRecord.

    Train keys: ``local-epochs``, ``lr``, ``momentum``, ``batch-size``, ``proximal-mu``
    (FedProx; 0 means FedAvg), ``seed``, ``server-round``.
    """

    def __init__(
        self, *, model: nn.Module, train: ArrayDataset, test: ArrayDataset, partition_id: int = 0
    ) -> None:
        self.model = model
        self.train = train
        self.test = test
        self.partition_id = partition_id

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return list(get_weights(self.model).values())

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        set_weights(self.model, parameters)
        cfg = TrainConfig(
            epochs=int(config.get("local-epochs", 1)),
            batch_size=int(config.get("batch-size", 32)),
            lr=float(config.get("lr", 0.05)),
            momentum=float(config.get("momentum", 0.0)),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            seed=seed_for(
                int(config.get("seed", 0)), int(config.get("server-round", 0)), self.partition_id
            ),
        )
        started = time.perf_counter()
        stats = train_local(self.model, self.train, cfg)
        metrics = {"train_loss": stats.loss, "compute_time_s": time.perf_counter() - started}
        return self.get_parameters({}), stats.num_examples, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        set_weights(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.test)
        return loss, len(self.test), {"accuracy": accuracy}
