"""Pre-train a backbone on public data for LoRA fine-tuning (``adapter=lora``).

    python -m simulations.lora_backbone [--out PATH] [--model cnn|mlp] [--epochs 15]

scikit-learn's 1,797 8x8 digits are public data here: scaled to 20x20 and padded to 28x28
(MNIST's layout: a 20x20 digit centred in a 4-pixel border), they pre-train the model the
federation will fine-tune on MNIST-5k, a different distribution of the same task. The
state file is what ``adapter.backbone`` names; its SHA-256 is printed and every client
checks it. Default output: ``$FL_EXT_HOME/backbones/<model>-digits28.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fl_ext.data.datasets import ArrayDataset, Digits
from fl_ext.models import MLP, ClassifierNet, SmallCNN
from fl_ext.models.adapted import file_sha256
from fl_ext.tracking import fl_ext_home
from fl_ext.training import TrainConfig, evaluate, train_local

MODELS = {"cnn": SmallCNN, "mlp": MLP}


def digits_as_mnist(x: np.ndarray) -> np.ndarray:
    """8x8 images in [0, 1] -> 28x28: bilinear to 20x20, zero border of 4 (MNIST's layout)."""
    small = F.interpolate(torch.from_numpy(x), size=(20, 20), mode="bilinear", align_corners=False)
    return F.pad(small, (4, 4, 4, 4)).clamp_(0.0, 1.0).numpy()


def pretrain(model_name: str, *, epochs: int, seed: int) -> tuple[ClassifierNet, float]:
    """The backbone trained on the digits' train split; its accuracy on their test split."""
    split = Digits(seed=seed).load()
    train = ArrayDataset(digits_as_mnist(split.train.x), split.train.y)
    test = ArrayDataset(digits_as_mnist(split.test.x), split.test.y)
    torch.manual_seed(seed)
    model: ClassifierNet = MODELS[model_name](input_shape=(1, 28, 28), num_classes=10)
    train_local(model, train, TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, seed=seed))
    return model, evaluate(model, test)[1]


def main(argv: list[str] | None = None) -> Path:
    """Pre-train, save the state, print its path and SHA-256."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    out = args.out or fl_ext_home() / "backbones" / f"{args.model}-digits28.pt"
    model, accuracy = pretrain(args.model, epochs=args.epochs, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(f"backbone: {out}\nsha256: {file_sha256(out)}\ndigits test accuracy: {accuracy:.4f}")
    return out


if __name__ == "__main__":
    main()
