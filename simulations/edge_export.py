"""The edge variant of a registered model: int8 ONNX, measured, registered as ``<name>-edge``.

The variant is its own registered model so that ``@best`` and ``@final`` of the main model
keep meaning what the README says; each version points back at the main version it was made
from (``source_version``) and carries what a device owner needs to choose it: size, single-
sample CPU latency and held-out accuracy of both the int8 file and the float32 model.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
from torch import nn

from fl_ext.data.datasets import ArrayDataset, TrainTestSplit
from fl_ext.models.edge import (
    CALIBRATION_COUNT,
    EdgeModel,
    OnnxPredictor,
    calibration_rows,
    export_int8,
)
from fl_ext.tracking.mlflow_tracker import MlflowTracker
from fl_ext.training import evaluate

log = logging.getLogger("fl_ext")

EDGE_ARTIFACT = "edge_model"
EDGE_SUFFIX = "-edge"
VARIANT = "int8-onnx"
LATENCY_REPEATS = 500
LATENCY_ROUNDS = 3  # best median of 3 interleaved rounds: load on the server drifts


@dataclass(frozen=True)
class EdgeFigures:
    """What the int8 variant costs and saves against the float32 model, on one held-out split."""

    size_bytes: int
    float_size_bytes: int
    latency_ms: float
    float_latency_ms: float  # the float32 ONNX file on the same runtime, same thread count
    correct: int
    float_correct: int  # the float32 torch model, as registered
    examples: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples

    @property
    def float_accuracy(self) -> float:
        return self.float_correct / self.examples

    def tags(self) -> dict[str, str]:
        """Registry tags; accuracies at full precision, the drop as a fraction (0.005: 0.5 pt)."""
        return {
            "size_kb": f"{self.size_bytes / 1024:.1f}",
            "float_size_kb": f"{self.float_size_bytes / 1024:.1f}",
            "compression": f"{self.float_size_bytes / self.size_bytes:.2f}",
            "latency_ms": f"{self.latency_ms:.4f}",
            "float_latency_ms": f"{self.float_latency_ms:.4f}",
            "accuracy": str(self.accuracy),
            "float_accuracy": str(self.float_accuracy),
            "accuracy_drop": str((self.float_correct - self.correct) / self.examples),
        }


def measure_edge(
    model: nn.Module, split: TrainTestSplit, out_dir: Path
) -> tuple[EdgeModel, EdgeFigures]:
    """Export ``model`` to ``out_dir``, calibrated on ``split.train``; measure on ``split.test``."""
    if len(split.test) == 0:
        raise ValueError("the held-out split is empty: nothing to measure the edge variant on")
    test = split.test
    edge = export_int8(
        model,
        example=test.x[:1],
        calibration=calibration_rows(split.train.x),
        out_dir=out_dir,
    )
    int8, fp32 = OnnxPredictor(edge.int8_path), OnnxPredictor(edge.float_path)
    _, float_accuracy = evaluate(copy.deepcopy(model), test)  # a copy: eval() changes modes
    latency, float_latency = float("inf"), float("inf")
    for _ in range(LATENCY_ROUNDS):
        latency = min(latency, int8.latency_ms(test.x[:1], LATENCY_REPEATS))
        float_latency = min(float_latency, fp32.latency_ms(test.x[:1], LATENCY_REPEATS))
    figures = EdgeFigures(
        size_bytes=edge.int8_size_bytes,
        float_size_bytes=edge.float_size_bytes,
        latency_ms=latency,
        float_latency_ms=float_latency,
        correct=_correct(int8, test),
        float_correct=round(float_accuracy * len(test)),
        examples=len(test),
    )
    return edge, figures


def register_edge_variant(
    tracker: MlflowTracker,
    *,
    model: nn.Module,
    split: TrainTestSplit,
    registered_name: str,
    source_version: str,
    tags: Mapping[str, str],
) -> str | None:
    """Log the int8 variant of ``model`` as the run's ``edge_model`` and register it.

    ``model`` takes raw images (the served model, normalisation included); ``tags`` are the
    main version's (dataset, strategy, ...), to which the edge figures are added. Returns the
    version under ``<registered_name>-edge``, or None when the tracker registers nothing (the
    artifact is logged all the same). Through the client only, as ``MlflowTracker.log_model``.
    """
    if not registered_name:
        raise ValueError("registered_name must be a non-empty model name")
    if tracker.run_id is None:
        raise RuntimeError("the tracker has no open run: start() it before registering")
    run_id = tracker.run_id
    with tempfile.TemporaryDirectory(prefix="fl-ext-edge-") as tmp:
        edge, figures = measure_edge(model, split, Path(tmp) / "export")
        _log_onnx_model(tracker, run_id, edge, split.test.x[:2], Path(tmp) / EDGE_ARTIFACT)
    log.info(
        "Edge variant: int8 ONNX %.1f KB (%.2fx smaller), %.4f ms vs %.4f ms float32, "
        "accuracy %.4f vs %.4f",
        figures.size_bytes / 1024,
        figures.float_size_bytes / figures.size_bytes,
        figures.latency_ms,
        figures.float_latency_ms,
        figures.accuracy,
        figures.float_accuracy,
    )
    if not tracker.register_model:
        return None
    name = f"{registered_name}{EDGE_SUFFIX}"
    edge_tags = {
        **{k: str(v) for k, v in tags.items()},
        "variant": VARIANT,
        "source_version": str(source_version),
        **figures.tags(),
        "quant_format": edge.quant_format,
        "opset": str(edge.opset),
        "runtime": f"onnxruntime=={package_version('onnxruntime')}",
        "latency_threads": "1",
        "calibration_examples": str(min(CALIBRATION_COUNT, len(split.train))),
    }
    return _register(tracker, run_id, name, source_of=registered_name, tags=edge_tags)


def _correct(predictor: OnnxPredictor, data: ArrayDataset) -> int:
    return int((predictor.predict(data.x).argmax(axis=1) == data.y).sum())


def _log_onnx_model(
    tracker: MlflowTracker, run_id: str, edge: EdgeModel, example: np.ndarray, path: Path
) -> None:
    """The int8 file as an MLflow ``onnx`` model (pyfunc-loadable), signature from the example.

    One self-contained file (no external data) so a device copies one thing; CPU provider
    only, so loading never looks for CUDA.
    """
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    logits = OnnxPredictor(edge.int8_path).predict(example)
    mlflow.onnx.save_model(
        onnx.load(str(edge.int8_path)),
        str(path),
        signature=infer_signature(example, {"logits": logits}),
        input_example=example,
        pip_requirements=[
            f"onnxruntime=={package_version('onnxruntime')}",
            f"onnx=={package_version('onnx')}",
            f"numpy=={package_version('numpy')}",
        ],
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=False,
    )
    tracker.client.log_artifacts(run_id, str(path), EDGE_ARTIFACT)


def _register(
    tracker: MlflowTracker, run_id: str, name: str, *, source_of: str, tags: dict[str, str]
) -> str:
    from mlflow.exceptions import MlflowException

    client = tracker.client
    try:
        client.create_registered_model(
            name,
            tags={"variant": VARIANT, "variant_of": source_of},
            description=f"int8 ONNX edge variant of '{source_of}' (tag source_version)",
        )
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{EDGE_ARTIFACT}"
    created = client.create_model_version(name, source, run_id=run_id, tags=tags)
    log.info("Registered edge model '%s' version %s", name, created.version)
    return str(created.version)
