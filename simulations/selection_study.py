"""Selection study: simulated time to accuracy of Oort-style vs random vs power-of-choice.

    python -m simulations.selection_study [--rounds 60] [--seeds 0 1 2] [--target 0.9]

MNIST-5k over 100 clients (Dirichlet alpha = 0.3), the ``mixed`` simulated network (devices
and links drawn per node, availability, dropouts, over-selection, adaptive deadline), 10
clients needed per round. Each run is the real experiment on the in-process driver with MLflow
in a temporary directory; time is the virtual clock's (simulated seconds, no sleeping). Prints
a markdown table (time to the target accuracy and final accuracy per selector, mean over
seeds and per seed) and writes ``selection_study.png`` (accuracy vs simulated time).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from simulations.study_runs import Point, run_curve, time_to

SELECTORS = {"random": "uniform", "oort": "oort", "power-of-choice": "power_of_choice"}
NODES = 100


def one(selection: str, seed: int, rounds: int, extra: list[str]) -> list[Point]:
    """Test accuracy and simulated time after every round."""
    overrides = [
        f"selection={selection}",
        f"seed={seed}",
        f"num_rounds={rounds}",
        "partition=dirichlet",
        "partition.alpha=0.3",
        "partition.min_partition_size=5",
        "network=mixed",
        "fraction_train=0.1",
        "min_train_nodes=10",
        "min_available_nodes=10",
        "fraction_evaluate=0.0",
        *extra,
    ]
    return run_curve(f"selection-{selection}-{seed}", overrides, NODES, ("sim_time_s",))


def main() -> None:
    """Run every selector for every seed; print the table, write the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--out", type=Path, default=Path("selection_study.png"))
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. model=mlp")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    curves: dict[str, dict[int, list[Point]]] = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["FL_EXT_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for label, selection in SELECTORS.items():
            curves[label] = {s: one(selection, s, args.rounds, args.overrides) for s in args.seeds}
    print(
        f"MNIST-5k, {NODES} clients, Dirichlet 0.3, mixed network, 10 per round, "
        f"{args.rounds} rounds, seeds {args.seeds}; simulated seconds\n"
    )
    head = f"time to {args.target:.2f} (mean)"
    print(f"| selector | {head} | per seed | final accuracy (mean) | per seed |")
    print("|---|---|---|---|---|")
    for label, by_seed in curves.items():
        reach = [time_to(c, args.target) for c in by_seed.values()]
        finals = [c[-1]["accuracy"] for c in by_seed.values()]
        shown = [f"{t:.0f}" if t is not None else "-" for t in reach]
        mean = (
            f"{statistics.mean(t for t in reach if t is not None):.0f}"
            if all(t is not None for t in reach)
            else "not reached by every seed"
        )
        print(
            f"| {label} | {mean} | {', '.join(shown)} | {statistics.mean(finals):.4f} | "
            f"{', '.join(f'{f:.3f}' for f in finals)} |"
        )
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, by_seed), color in zip(
        curves.items(), ["tab:gray", "tab:blue", "tab:orange"], strict=True
    ):
        for i, c in enumerate(by_seed.values()):
            ax.plot(
                [p["sim_time_s"] for p in c],
                [p["accuracy"] for p in c],
                color=color,
                alpha=0.8,
                label=label if i == 0 else None,
            )
    ax.axhline(args.target, color="k", lw=0.5, ls="--")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
