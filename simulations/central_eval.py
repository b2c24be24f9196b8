"""Centralized evaluation: the global model on the server's held-out test split, each round."""

from __future__ import annotations

from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from fl_ext.data.datasets import ArrayDataset
from fl_ext.params import set_weights
from fl_ext.training import evaluate
from simulations.build import Built
from strategies.submodels import SubModels


def central_evaluate(built: Built, server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Loss and accuracy of the global model on the server's held-out test split (normalised)."""
    set_weights(built.model, arrays.to_numpy_ndarrays())
    loss, accuracy = evaluate(built.model, built.server_test())
    built.history[server_round] = accuracy
    metrics: dict[str, int | float | list[int] | list[float]] = {"loss": loss, "accuracy": accuracy}
    if built.submodels is not None:
        metrics.update(width_metrics(built.model, built.submodels, built.server_test()))
    return MetricRecord(metrics)


def width_metrics(model: nn.Module, stage: SubModels, test: ArrayDataset) -> dict[str, float]:
    """Accuracy and loss of every narrower width of the global model, as its own model.

    The leading slice at each width (what a static or ordered-dropout client of that width
    receives): ``accuracy_w0.25`` etc.
    """
    out: dict[str, float] = {}
    for width in stage.widths:
        if width >= 1.0:
            continue
        sub = stage.plan.indices(width).submodel(model)
        loss, accuracy = evaluate(sub, test)
        out[f"accuracy_w{width:g}"], out[f"loss_w{width:g}"] = accuracy, loss
    return out
