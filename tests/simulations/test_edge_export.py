"""The edge variant is registered as ``<name>-edge`` (real MLflow registry in sqlite, tmp home).

The main model's ``@best``/``@final`` stay on its own version; the edge version carries the
figures as tags, and ``mlflow.pyfunc.load_model`` of it predicts what OnnxPredictor predicts on
the logged file.
"""

from __future__ import annotations

import os

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from fl_ext.data import Digits
from fl_ext.data.normalize import Normalization
from fl_ext.models import MLP
from fl_ext.models.edge import OnnxPredictor
from fl_ext.models.normalized import Normalized
from fl_ext.tracking import resolve_tracking_uri
from fl_ext.tracking.mlflow_tracker import MlflowTracker
from fl_ext.training import TrainConfig, train_local
from simulations.edge_export import EDGE_ARTIFACT, register_edge_variant

NAME = "fl-ext-digits-mlp"
FIGURE_TAGS = (
    "size_kb",
    "float_size_kb",
    "compression",
    "latency_ms",
    "float_latency_ms",
    "accuracy",
    "float_accuracy",
    "accuracy_drop",
)


@pytest.fixture(scope="module")
def trained():
    split = Digits().load()
    torch.manual_seed(0)
    x = split.train.x
    norm = Normalization.of([float(x.mean())], [float(x.std())])
    model = Normalized(MLP(input_shape=split.input_shape, num_classes=10), norm)
    train_local(model, norm.apply(split.train), TrainConfig(epochs=5, lr=0.05, momentum=0.9))
    return model.eval(), split


def _tracker(**kwargs) -> MlflowTracker:
    tracker = MlflowTracker(experiment="edge-test", **kwargs)
    tracker.start(run_name="edge", params={}, tags={})
    return tracker


def test_edge_variant_is_its_own_registered_model(trained, tmp_path):
    model, split = trained
    fluent_uri = mlflow.get_tracking_uri()
    tracker = _tracker()
    main = tracker.log_model(
        model,
        input_example=split.test.x[:2],
        registered_name=NAME,
        tags={"stage": "final"},
        aliases=("best", "final"),
    )
    version = register_edge_variant(
        tracker,
        model=model,
        split=split,
        registered_name=NAME,
        source_version=str(main),
        tags={"dataset": "digits", "variant": "overridden"},
    )
    tracker.end()
    assert version == "1"
    client = tracker.client
    edge = client.get_model_version(f"{NAME}-edge", version)
    tags = edge.tags
    assert tags["variant"] == "int8-onnx"
    assert tags["source_version"] == main
    assert tags["dataset"] == "digits"  # the main version's tags travel along
    assert all(key in tags for key in FIGURE_TAGS)
    assert float(tags["compression"]) >= 3.0
    assert float(tags["size_kb"]) * float(tags["compression"]) == pytest.approx(
        float(tags["float_size_kb"]), rel=0.01
    )
    assert float(tags["latency_ms"]) > 0 and float(tags["float_latency_ms"]) > 0
    assert float(tags["float_accuracy"]) >= 0.85
    drop = float(tags["float_accuracy"]) - float(tags["accuracy"])
    assert float(tags["accuracy_drop"]) == pytest.approx(drop, abs=1e-12)
    assert drop <= 0.02
    assert edge.run_id == tracker.run_id
    # the main model's aliases did not move, and the edge model has none
    assert str(client.get_model_version_by_alias(NAME, "best").version) == main
    assert str(client.get_model_version_by_alias(NAME, "final").version) == main
    assert not client.get_registered_model(f"{NAME}-edge").aliases
    assert client.get_registered_model(f"{NAME}-edge").tags["variant_of"] == NAME
    # MLflow's fluent state untouched: the next run in this process goes where it should
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == fluent_uri != tracker.uri

    loaded = mlflow.pyfunc.load_model(client.get_model_version_download_uri(f"{NAME}-edge", "1"))
    onnx_file = client.download_artifacts(tracker.run_id, f"{EDGE_ARTIFACT}/model.onnx", tmp_path)
    x = split.test.x
    served = loaded.predict(x)["logits"]
    np.testing.assert_allclose(served, OnnxPredictor(onnx_file).predict(x), atol=1e-6)
    with torch.no_grad():
        float_labels = model(torch.from_numpy(x)).argmax(1).numpy()
    assert (served.argmax(1) == float_labels).mean() >= 0.95
    assert loaded.metadata.get_input_schema().inputs[0].shape == (-1, 1, 8, 8)


def test_registry_off_logs_the_artifact_and_registers_nothing(trained):
    model, split = trained
    tracker = _tracker(register_model=False)
    version = register_edge_variant(
        tracker, model=model, split=split, registered_name=NAME, source_version="1", tags={}
    )
    assert version is None
    artifacts = [a.path for a in tracker.client.list_artifacts(tracker.run_id, EDGE_ARTIFACT)]
    assert f"{EDGE_ARTIFACT}/model.onnx" in artifacts and f"{EDGE_ARTIFACT}/MLmodel" in artifacts
    assert not tracker.client.search_registered_models()


def test_refuses_without_a_run_or_a_name(trained):
    model, split = trained
    with pytest.raises(RuntimeError, match="no open run"):
        register_edge_variant(
            MlflowTracker(),
            model=model,
            split=split,
            registered_name=NAME,
            source_version="1",
            tags={},
        )
    with pytest.raises(ValueError, match="registered_name"):
        register_edge_variant(
            _tracker(), model=model, split=split, registered_name="", source_version="1", tags={}
        )


def test_a_run_with_edge_export_registers_its_int8_variant_beside_the_final_model():
    from simulations.build import build
    from simulations.client_app import app as client_app
    from simulations.config import compose_experiment
    from simulations.inprocess import InProcessGrid
    from simulations.run_loop import run

    overrides = ["dataset=digits", "model=mlp", "num_rounds=2", "fraction_evaluate=0.0",
                 "preprocessing=federated_stats", "preprocessing.min_count=5",
                 "edge_export=int8"]  # fmt: skip
    built = build(compose_experiment(overrides))
    run(InProcessGrid(client_app, 3), built)
    client = MlflowClient(resolve_tracking_uri())
    final = client.get_model_version_by_alias("fl-ext-digits-mlp", "final")
    (edge,) = client.search_model_versions("name = 'fl-ext-digits-mlp-edge'")
    assert edge.tags["source_version"] == str(final.version)
    assert edge.tags["variant"] == "int8-onnx" and float(edge.tags["compression"]) > 3.0
    assert float(edge.tags["accuracy_drop"]) <= 0.02  # normalisation inside: raw images in
    run_tags = client.get_run(final.run_id).data.tags
    assert run_tags["edge_version"] == str(edge.version)
