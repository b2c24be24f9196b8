"""Edge export: float32 ONNX matches torch, int8 agrees with it on most digits, and is smaller.

Trained on scikit-learn's digits (8x8) so that agreement means something (an untrained model's
logits are nearly tied and flip under any rounding), exported for real with torch's exporter and
onnxruntime's static quantizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fl_ext.data import Digits
from fl_ext.data.datasets import TrainTestSplit
from fl_ext.data.normalize import Normalization
from fl_ext.models import MLP, SmallCNN
from fl_ext.models.edge import EdgeModel, OnnxPredictor, calibration_rows, export_int8
from fl_ext.models.normalized import Normalized
from fl_ext.training import TrainConfig, train_local

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def split() -> TrainTestSplit:
    return Digits().load()


def _mlp(split: TrainTestSplit) -> nn.Module:
    model = MLP(input_shape=SHAPE, num_classes=10)
    train_local(model, split.train, TrainConfig(epochs=8, lr=0.05, momentum=0.9))
    return model


def _normalized_cnn(split: TrainTestSplit) -> nn.Module:
    x = split.train.x
    norm = Normalization.of([float(x.mean())], [float(x.std())])
    model = Normalized(SmallCNN(input_shape=SHAPE, num_classes=10), norm)
    train_local(model, split.train, TrainConfig(epochs=8, lr=0.05, momentum=0.9))
    return model


BUILDERS: dict[str, Callable[[TrainTestSplit], nn.Module]] = {
    "mlp": _mlp,
    "normalized_cnn": _normalized_cnn,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def exported(
    request: pytest.FixtureRequest, split: TrainTestSplit, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, nn.Module, EdgeModel]:
    torch.manual_seed(0)
    model = BUILDERS[request.param](split)
    edge = export_int8(
        model,
        example=split.test.x[:1],
        calibration=calibration_rows(split.train.x),
        out_dir=tmp_path_factory.mktemp(request.param),
    )
    return request.param, model, edge


@torch.no_grad()
def _torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model.eval()(torch.from_numpy(x)).numpy()


def test_files_and_sizes(exported):
    kind, _, edge = exported
    assert edge.float_path.is_file() and edge.int8_path.is_file()
    assert edge.float_size_bytes == edge.float_path.stat().st_size
    assert edge.int8_size_bytes == edge.int8_path.stat().st_size
    assert edge.input_shape == SHAPE
    assert edge.quant_format == "qdq"
    # the MLP's weights dominate its file: the 3x; the 14k-weight CNN pays per-layer
    # overhead (int32 biases with their scales, graph nodes)
    assert edge.compression >= (3.0 if kind == "mlp" else 2.2)  # measured 3.37 and 2.53
    assert sorted(p.name for p in edge.float_path.parent.iterdir()) == [
        "model_fp32.onnx",
        "model_int8.onnx",
    ]


def test_float_onnx_matches_torch_and_batch_is_dynamic(exported, split):
    _, model, edge = exported
    predictor = OnnxPredictor(edge.float_path)
    for n in (1, 7):
        x = split.test.x[:n]
        np.testing.assert_allclose(predictor.predict(x), _torch_logits(model, x), atol=1e-4)


def test_int8_agrees_with_float32_on_most_inputs(exported, split):
    _, model, edge = exported
    x, y = split.test.x, split.test.y
    float_logits = _torch_logits(model, x)
    int8_logits = OnnxPredictor(edge.int8_path).predict(x)
    assert int8_logits.shape == float_logits.shape == (len(x), 10)
    assert int8_logits.dtype == np.float32
    agree = (int8_logits.argmax(1) == float_logits.argmax(1)).mean()
    assert agree >= 0.95
    drop = (float_logits.argmax(1) == y).mean() - (int8_logits.argmax(1) == y).mean()
    assert drop <= 0.02
    assert (float_logits.argmax(1) == y).mean() >= 0.85  # a trained model, or this says nothing


def test_latency_is_a_positive_median(exported, split):
    _, _, edge = exported
    predictor = OnnxPredictor(edge.int8_path)
    ms = predictor.latency_ms(split.test.x[:1], repeats=20)
    assert math.isfinite(ms) and ms > 0  # a measured figure; how fast is the machine's business


def test_export_leaves_the_model_as_it_was(split, tmp_path):
    model = MLP(input_shape=SHAPE, num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_int8(model, example=split.test.x[:2], calibration=split.train.x[:64], out_dir=tmp_path)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_calibration_rows_are_a_seeded_draw():
    x = np.arange(1000, dtype=np.float32).reshape(-1, 1, 1, 1)
    rows = calibration_rows(x, count=300)
    assert rows.shape == (300, 1, 1, 1) and len(np.unique(rows)) == 300
    np.testing.assert_array_equal(rows, calibration_rows(x, count=300))
    assert not np.array_equal(rows, x[:300])  # not the first rows (a split sorted by class)
    assert len(calibration_rows(x[:10], count=300)) == 10
    with pytest.raises(ValueError, match="count"):
        calibration_rows(x, count=0)


GOOD = np.zeros((2, *SHAPE), dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "not a model"}, "torch.nn.Module"),
        ({"example": [[0.0]]}, "numpy array"),
        ({"example": np.zeros((2, *SHAPE), dtype=np.int64)}, "floating-point"),
        ({"example": np.zeros((0, *SHAPE), dtype=np.float32)}, "non-empty batch"),
        ({"example": np.zeros(5, dtype=np.float32)}, "non-empty batch"),
        ({"example": np.full((2, *SHAPE), np.nan, dtype=np.float32)}, "NaN"),
        ({"calibration": np.zeros((4, 1, 28, 28), dtype=np.float32)}, "shape"),
        ({"calibration": np.zeros((0, *SHAPE), dtype=np.float32)}, "non-empty batch"),
        ({"calibration": np.full((4, *SHAPE), np.inf, dtype=np.float32)}, "infinite"),
        ({"quant_format": "int4"}, "quant_format"),
        (
            {
                "example": np.zeros((2, 1, 28, 28), dtype=np.float32),
                "calibration": np.zeros((2, 1, 28, 28), dtype=np.float32),
            },
            "does not accept the example",
        ),
    ],
)
def test_export_refuses_bad_inputs(kwargs, match, tmp_path):
    args = {
        "model": MLP(input_shape=SHAPE, num_classes=10),
        "example": GOOD,
        "calibration": GOOD,
        "out_dir": tmp_path,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        export_int8(**args)
    assert not any(tmp_path.glob("*.onnx"))


def test_predictor_refuses_bad_inputs(exported, tmp_path: Path):
    _, _, edge = exported
    predictor = OnnxPredictor(edge.int8_path)
    with pytest.raises(ValueError, match="takes images"):
        predictor.predict(np.zeros((2, 1, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="takes images"):
        predictor.predict(np.zeros((2, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        predictor.predict(np.zeros((2, *SHAPE), dtype=np.uint8))
    with pytest.raises(ValueError, match="one example"):
        predictor.latency_ms(GOOD)
    with pytest.raises(ValueError, match="repeats"):
        predictor.latency_ms(GOOD[:1], repeats=0)
    with pytest.raises(ValueError, match="not found"):
        OnnxPredictor(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="threads"):
        OnnxPredictor(edge.int8_path, threads=0)
