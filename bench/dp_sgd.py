"""DP-SGD throughput: no DP vs Opacus defaults vs fl-ext's default, same data, one process.

    python -m bench.dp_sgd [--samples 2000] [--epochs 2] [--threads 1 2]

MNIST-5k images (real, 1x28x28), batch 64, MLP (200-200) and the small CNN. Printed per model
and thread count: samples per second and the slowdown against plain SGD on the same samples.
"Opacus defaults" is ``PrivacyEngine().make_private(...)`` with its default per-sample
gradients (hooks) and Poisson sampling; "fl-ext default" is :func:`train_dp_sgd` with the
configured default (``privacy.grad_sample_mode=fused``). The malloc setting in effect is
printed (see DESIGN.md: freed memory kept or returned to the OS changes these figures).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl_ext.data import Mnist5k
from fl_ext.data.datasets import ArrayDataset
from fl_ext.models import MLP, SmallCNN
from fl_ext.privacy.dp_sgd import DpSgdConfig, train_dp_sgd
from fl_ext.training import TrainConfig, train_local

BATCH = 64


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return MLP(input_shape=(1, 28, 28), num_classes=10)
    return SmallCNN(input_shape=(1, 28, 28), num_classes=10)


def no_dp(kind: str, data: ArrayDataset, epochs: int) -> float:
    model = _model(kind)
    start = time.perf_counter()
    train_local(model, data, TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.05))
    return time.perf_counter() - start


def opacus_defaults(kind: str, data: ArrayDataset, epochs: int) -> float:
    model = _model(kind)
    dataset = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=BATCH)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    module, dp_opt, dp_loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    criterion = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for xb, yb in dp_loader:
            dp_opt.zero_grad()
            if len(xb):
                criterion(module(xb), yb).backward()
            dp_opt.step()
    return time.perf_counter() - start


def fl_ext_default(kind: str, data: ArrayDataset, epochs: int) -> float:
    model = _model(kind)
    dp = DpSgdConfig(max_grad_norm=1.0, delta=1e-5, noise_multiplier=1.0)
    start = time.perf_counter()
    train_dp_sgd(
        model,
        data,
        train=TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.05),
        dp=dp,
        history=[],
        noise_multiplier=1.0,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    split = Mnist5k().load()
    data = ArrayDataset(split.train.x[: args.samples], split.train.y[: args.samples])
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    print(
        f"torch {torch.__version__}, {len(data)} samples x {args.epochs} epochs, batch {BATCH}, "
        f"malloc: {'freed memory kept' if malloc else 'default glibc'}\n"
    )
    print("| model | threads | implementation | samples/s | slowdown vs no DP |")
    print("|---|---|---|---|---|")
    for kind in ("mlp", "cnn"):
        for threads in args.threads:
            torch.set_num_threads(threads)
            runs = {"no DP": no_dp, "Opacus defaults (hooks)": opacus_defaults}
            runs["fl-ext default (fused)"] = fl_ext_default
            for fn in runs.values():  # warm-up: first-call costs out of the timing
                fn(kind, ArrayDataset(data.x[:BATCH], data.y[:BATCH]), 1)
            base = None
            for name, fn in runs.items():
                seconds = min(fn(kind, data, args.epochs) for _ in range(2))
                rate = len(data) * args.epochs / seconds
                base = base or seconds
                print(f"| {kind} | {threads} | {name} | {rate:,.0f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()
