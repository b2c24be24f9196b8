"""Edge export: a float32 model to ONNX, then static int8 quantization with onnxruntime.

An edge device runs the model without torch: the float32 graph is exported with torch's
``torch.export``-based ONNX exporter (the default one since torch 2.9; the TorchScript one is
deprecated and slated for removal) and quantized by onnxruntime's static quantizer,
calibrated on a few hundred training images: weights int8 per output channel, activations
uint8 (U8S8, onnxruntime's recommended combination on x86-64 and Arm64).

The default format is QDQ (QuantizeLinear/DequantizeLinear pairs around float operators, all
standard ONNX): onnxruntime fuses them into the same integer kernels QOperator names directly,
so both ran equally fast here (``python -m bench.edge``), but QOperator writes Linear layers as
``com.microsoft.QGemm``, which only onnxruntime runs, while XNNPACK, NNAPI, TensorRT or QNN
read a QDQ file. QOperator's file is 3-8% smaller (its biases carry no scale of their own).
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

OPSET = 20  # the exporter's own default: no version conversion; onnxruntime >= 1.17 runs it
INPUT_NAME = "x"
OUTPUT_NAME = "logits"
FLOAT_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"
CALIBRATION_BATCH = 32  # rows per calibration feed: fewer session calls, same min/max
EXPORT_ATOL = 1e-4  # onnxruntime float32 vs torch logits on the example, after export
WARMUP_RUNS = 10  # first runs allocate arenas and pick kernels; kept out of the median
CALIBRATION_COUNT = 300  # activation ranges settle well before this on 8x8 and 28x28 digits

QuantFormatName = Literal["qdq", "qoperator"]


@dataclass(frozen=True)
class EdgeModel:
    """The float32 and int8 ONNX files of one model and their sizes on disk."""

    float_path: Path
    int8_path: Path
    float_size_bytes: int
    int8_size_bytes: int
    input_shape: tuple[int, ...]  # one example, without the batch dimension
    opset: int
    quant_format: QuantFormatName

    @property
    def compression(self) -> float:
        """How many times smaller the int8 file is than the float32 one."""
        return self.float_size_bytes / self.int8_size_bytes


def export_int8(
    model: nn.Module,
    *,
    example: np.ndarray,
    calibration: np.ndarray,
    out_dir: Path,
    quant_format: QuantFormatName = "qdq",
) -> EdgeModel:
    """Export ``model`` to ``out_dir/model_fp32.onnx`` and its int8 variant ``model_int8.onnx``.

    ``example``: float images ``[n, ...]`` the model accepts (their shape fixes the graph's
    input shape; the batch dimension stays dynamic). ``calibration``: images of the same shape
    the activation ranges are measured on (a few hundred training images). The model is
    copied and put in eval mode; the caller's is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example = _images("example", example)
    calibration = _images("calibration", calibration, shape=example.shape[1:])
    formats = _quant_formats()
    if quant_format not in formats:
        raise ValueError(f"quant_format must be one of {sorted(formats)}, got {quant_format!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = out_dir / FLOAT_FILE, out_dir / INT8_FILE

    frozen = copy.deepcopy(model).float().eval()
    expected = _forward(frozen, example)
    _export_float(frozen, example, float_path)
    got = OnnxPredictor(float_path).predict(example)
    if got.shape != expected.shape or not np.allclose(got, expected, atol=EXPORT_ATOL, rtol=0):
        raise RuntimeError(
            f"exported ONNX graph disagrees with the torch model on the example (max |diff| "
            f"{float(np.max(np.abs(got - expected))) if got.shape == expected.shape else 'n/a'})"
        )
    _quantize(float_path, int8_path, calibration, formats[quant_format])
    return EdgeModel(
        float_path=float_path,
        int8_path=int8_path,
        float_size_bytes=float_path.stat().st_size,
        int8_size_bytes=int8_path.stat().st_size,
        input_shape=tuple(int(s) for s in example.shape[1:]),
        opset=OPSET,
        quant_format=quant_format,
    )


def calibration_rows(x: np.ndarray, *, count: int = CALIBRATION_COUNT, seed: int = 0) -> np.ndarray:
    """``count`` rows of ``x`` drawn without replacement, the same ones for the same seed.

    A seeded draw rather than the first rows: a training split sorted by class would
    otherwise calibrate on a few classes only.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if len(x) == 0:
        raise ValueError("cannot draw calibration rows from an empty array")
    rows = np.random.default_rng(seed).permutation(len(x))[:count]
    return x[np.sort(rows)]


class OnnxPredictor:
    """An onnxruntime CPU session on one ONNX file: logits and single-sample latency.

    One intra-op thread by default: an edge device has few cores to spare, and one thread
    makes latencies comparable between machines and runs.
    """

    def __init__(self, path: Path | str, *, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"ONNX model file not found: {path}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: no "unused initializer" chatter
        self.path = path
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path} has {len(inputs)} inputs; an image classifier has one")
        self._input = inputs[0].name
        shape = inputs[0].shape
        # fixed dims are ints; the dynamic batch is a name (str) or None
        self.input_shape = tuple(d if isinstance(d, int) else None for d in shape[1:])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[n, classes]`` (float32) of images ``x`` ``[n, *input_shape]``."""
        x = self._check(x)
        out: np.ndarray = self._session.run(None, {self._input: x})[0]
        return out

    def latency_ms(self, x1: np.ndarray, repeats: int = 200) -> float:
        """Median wall time in ms of one single-sample inference ``x1`` ``[1, ...]``."""
        x1 = self._check(x1)
        if x1.shape[0] != 1:
            raise ValueError(f"latency is measured on one example [1, ...], got {x1.shape}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
        run, feed = self._session.run, {self._input: x1}
        for _ in range(WARMUP_RUNS):
            run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter_ns()
            run(None, feed)
            times.append(time.perf_counter_ns() - start)
        return statistics.median(times) / 1e6

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = _images("x", x)
        dims = x.shape[1:]
        if len(dims) != len(self.input_shape) or any(
            want is not None and want != got
            for want, got in zip(self.input_shape, dims, strict=True)
        ):
            raise ValueError(
                f"{self.path.name} takes images [n, {', '.join(map(str, self.input_shape))}], "
                f"got {x.shape}"
            )
        return x


def _images(name: str, x: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 batch, or a ValueError saying what is wrong with it."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty batch [n, ...], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point images, got dtype {x.dtype}")
    if shape is not None and x.shape[1:] != shape:
        raise ValueError(f"{name} examples must have shape {shape}, got {x.shape[1:]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


@torch.no_grad()
def _forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    try:
        out = model(torch.from_numpy(x))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"model does not accept the example of shape {x.shape}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != x.shape[0]:
        raise ValueError("model must return one tensor [n, ...] for a batch of n examples")
    result: np.ndarray = out.detach().float().numpy()
    return result


@contextmanager
def _quiet(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Only ``level`` and above from these loggers for a while.

    Their INFO is pass-by-pass chatter, and the exporter warns about every optional
    torchvision op it cannot find.
    """
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)


def _export_float(model: nn.Module, example: np.ndarray, path: Path) -> None:
    """The float32 graph, batch dimension dynamic, weights inside the one file.

    The exporter annotates every node with its Python stack trace (absolute paths of this
    machine) and FX node text; that is a tenth of a small model's file and no business of a
    device, so it is dropped.
    """
    import onnx
    from torch.export import Dim

    x = torch.from_numpy(example)
    if x.shape[0] == 1:  # torch.export specialises a size-1 dimension: trace with two rows
        x = x.repeat(2, *([1] * (x.ndim - 1)))
    with (
        _quiet("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir"),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (x,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: Dim("batch")},),
            opset_version=OPSET,
            verbose=False,
        )
    if program is None:  # only the TorchScript path returns None
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _quant_formats() -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat

    return {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}


def _quantize(float_path: Path, int8_path: Path, calibration: np.ndarray, fmt: Any) -> None:
    """Static int8 of the float32 file, calibrated on ``calibration``'s min/max.

    Shape inference and graph clean-up first (onnxruntime's advice), then per-channel int8
    weights and uint8 activations.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):  # type: ignore[misc]  # untyped base
        """The calibration images in feeds of CALIBRATION_BATCH rows."""

        def __init__(self) -> None:
            step = CALIBRATION_BATCH
            self._feeds = iter(
                [{INPUT_NAME: calibration[i : i + step]} for i in range(0, len(calibration), step)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    prepared = int8_path.with_name(f".{int8_path.stem}.prepared.onnx")
    try:
        with _quiet("onnxruntime", "onnx_ir", level=logging.WARNING):
            quant_pre_process(str(float_path), str(prepared))
            quantize_static(
                str(prepared),
                str(int8_path),
                Batches(),
                quant_format=fmt,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    finally:
        if prepared.exists():
            os.remove(prepared)
