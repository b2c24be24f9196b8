"""Centralized evaluation: the global model on the server's held-out test split, each round."""

from __future__ import annotations

from flwr.app import ArrayRecord, MetricRecord

from fl_ext.params import set_weights
from fl_ext.training import evaluate
from simulations.build import Built


def central_evaluate(built: Built, server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Loss and accuracy of the global model on the server's held-out test split (normalised)."""
    set_weights(built.model, arrays.to_numpy_ndarrays())
    loss, accuracy = evaluate(built.model, built.server_test())
    built.history[server_round] = accuracy
    return MetricRecord({"loss": loss, "accuracy": accuracy})
