"""LoRA study: federated fine-tuning of a public-data backbone on MNIST-5k, by mode.

    python -m simulations.lora_study [--backbone PATH] [--rounds 20] [--json PATH] [overrides]

The backbone is the CNN pre-trained on scikit-learn's digits scaled to 28x28
(:mod:`simulations.lora_backbone`, made first when ``--backbone`` is not given); 10 IID
clients fine-tune it on MNIST-5k. Settings: ``ffa`` (A frozen, B averaged: exact, half the
upload), ``fedavg_ab`` (A and B averaged separately: FlowerTune's baseline), ``flexlora`` (the
exact product mean, truncated back to the rank) and ``full`` (every weight fine-tuned and
sent). Each run is the real experiment on the in-process grid, tracking off. Prints the test
accuracy by round and the measured upload per round; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from fl_ext.models.adapted import load_backbone
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.lora_backbone import main as make_backbone
from simulations.run_loop import run

NODES = 10
MODES = ("ffa", "fedavg_ab", "flexlora", "full")
BASE = ["model=cnn", "fraction_evaluate=0", "tracking=none", "checkpoint.enabled=false"]


def one(mode: str, backbone: Path, rounds: int, extra: list[str]) -> dict[str, Any]:
    """Accuracy by round and upload bytes per round of one setting."""
    overrides = [*BASE, f"num_rounds={rounds}", *extra]
    if mode != "full":
        overrides += ["adapter=lora", f"adapter.mode={mode}", f"adapter.backbone={backbone}"]
    built = build(compose_experiment(overrides))
    if mode == "full":  # the same start: the backbone's weights, all of them trained
        load_backbone(built.model, backbone)
    run(InProcessGrid(client_app, NODES), built)
    return {
        "accuracy": {int(r): float(a) for r, a in built.history.items()},
        "kb_up_per_round": built.strategy.round_log.bytes_up / 1e3,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every mode; print the table (and write the JSON)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backbone", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. lr=0.01")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone or make_backbone(["--out", str(Path(tmp) / "cnn.pt")])
        logging.disable(logging.WARNING)
        results = {m: one(m, backbone, args.rounds, args.overrides) for m in args.modes}
    marks = sorted({1, 5, 10, args.rounds} & set(range(1, args.rounds + 1)))
    print(f"\nMNIST-5k, {NODES} IID clients, CNN backbone from digits-28, {args.rounds} rounds\n")
    print("| mode | " + " | ".join(f"acc r{r}" for r in [0, *marks]) + " | KB up / round |")
    print("|---|" + "---|" * (len(marks) + 2))
    for mode, res in results.items():
        accs = " | ".join(f"{res['accuracy'].get(r, float('nan')):.4f}" for r in [0, *marks])
        print(f"| {mode} | {accs} | {res['kb_up_per_round']:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": args.rounds, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
