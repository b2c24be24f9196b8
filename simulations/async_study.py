"""Asynchronous study: FedBuff vs synchronous rounds in simulated time to accuracy.

    python -m simulations.async_study [--trainings 1500] [--seeds 0 1 2] [--target 0.9]
                                      [--json PATH] [--out PATH] [overrides ...]

MNIST-5k over 100 clients (Dirichlet alpha = 0.3), the ``mixed`` simulated network (devices
and links drawn per node, availability and dropouts), every setting given the same client
computation: ``--trainings`` client trainings started (a dropped or late one counts, it was
computed). Settings:

* ``fedavg``: synchronous FedAvg, 10 uniform clients per round, every reply waited for;
* ``sync-deadline``: synchronous with 1.3x over-selection and the adaptive p90 deadline
  (the first 10 replies count);
* ``oort``: the same with Oort-style selection (the selection study's best);
* ``fedbuff``: FedBuff, 20 clients training at once, a model version every 10 updates, each
  free slot given to a uniformly drawn free node;
* ``fedbuff-oort``: the same with Oort-style utility choosing who gets the next job.

Each run is the real experiment on the in-process grid with MLflow in a temporary directory;
time is the virtual clock's (simulated seconds). Prints a markdown table (time to the target,
final accuracy at the budget, speed-up over ``fedavg``; mean over seeds and per seed), writes
the plot (accuracy vs simulated time) and, with ``--json``, every curve and figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from simulations.study_runs import Point, run_curve, time_to

NODES = 100
PER_ROUND = 10
CONCURRENCY, BUFFER = 20, 10
FEDBUFF = ["driver=fedbuff", f"driver.concurrency={CONCURRENCY}", f"driver.buffer_size={BUFFER}"]
BASE = [
    "partition=dirichlet",
    "partition.alpha=0.3",
    "partition.min_partition_size=5",
    "network=mixed",
    "fraction_train=0.1",
    f"min_train_nodes={PER_ROUND}",
    f"min_available_nodes={PER_ROUND}",
    "fraction_evaluate=0.0",
]
# label -> (overrides, client trainings per round; None: the driver counts them)
SETTINGS: dict[str, tuple[list[str], float | None]] = {
    "fedavg": (["network.over_selection=1.0", "network.deadline_percentile=null"], PER_ROUND),
    "sync-deadline": ([], math.ceil(1.3 * PER_ROUND)),
    "oort": (["selection=oort"], math.ceil(1.3 * PER_ROUND)),
    "fedbuff": (FEDBUFF, None),
    "fedbuff-oort": ([*FEDBUFF, "selection=oort"], None),
}
COLORS = {"fedavg": "tab:gray", "sync-deadline": "tab:green", "oort": "tab:blue",
          "fedbuff": "tab:red", "fedbuff-oort": "tab:purple"}  # fmt: skip


def one(label: str, seed: int, trainings: int, extra: list[str]) -> list[Point]:
    """The curve of one setting and seed, cut at ``trainings`` client trainings started."""
    overrides, per_round = SETTINGS[label]
    if per_round is not None:  # a synchronous round starts one training per selected node
        rounds, counter = math.ceil(trainings / per_round), "clients_selected"
    else:  # FedBuff: a version takes at least BUFFER trainings; the counter cuts the curve
        rounds, counter = math.ceil(trainings / BUFFER), "async_jobs"
    curve = run_curve(
        f"async-{label}-{seed}",
        [*BASE, *overrides, f"seed={seed}", f"num_rounds={rounds}", *extra],
        NODES,
        ("sim_time_s", counter),
    )
    total = 0.0
    for p in curve:  # the compute spent so far, whatever the driver
        total = p[counter] if per_round is None else total + p[counter]
        p["trainings"] = total
    return [p for p in curve if p["trainings"] <= trainings]


def summary(curves: dict[str, dict[int, list[Point]]], target: float) -> dict[str, Any]:
    """Per setting: time to ``target`` and final accuracy per seed, means, speed-up."""
    out: dict[str, Any] = {}
    for label, by_seed in curves.items():
        reach = {s: time_to(c, target) for s, c in by_seed.items()}
        finals = {s: c[-1]["accuracy"] if c else math.nan for s, c in by_seed.items()}
        reached = [t for t in reach.values() if t is not None]
        out[label] = {
            "time_to_target_s": reach,
            "time_to_target_mean_s": (
                statistics.mean(reached) if len(reached) == len(reach) else None
            ),
            "final_accuracy": finals,
            "final_accuracy_mean": statistics.mean(finals.values()),
            "trainings": {s: c[-1]["trainings"] if c else 0.0 for s, c in by_seed.items()},
        }
    base = out.get("fedavg", {}).get("time_to_target_s", {})
    for row in out.values():  # per seed, then the mean of the per-seed speed-ups
        ups = [
            base[s] / t
            for s, t in row["time_to_target_s"].items()
            if t is not None and base.get(s) is not None
        ]
        row["speedup_vs_fedavg"] = statistics.mean(ups) if ups else None
        row["speedup_seeds"] = len(ups)
    return out


def table(figures: dict[str, Any], target: float) -> str:
    """The markdown table of :func:`summary`'s figures."""
    lines = [
        f"| setting | time to {target:.2f} (mean, s) | per seed | speed-up vs fedavg "
        "(seeds with both) | final accuracy (mean) | per seed | trainings |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in figures.items():
        reach = row["time_to_target_s"].values()
        mean = row["time_to_target_mean_s"]
        up = row["speedup_vs_fedavg"]
        lines.append(
            f"| {label} | {'-' if mean is None else f'{mean:.0f}'} | "
            f"{', '.join('-' if t is None else f'{t:.0f}' for t in reach)} | "
            f"{'-' if up is None else f'{up:.2f}x'} ({row['speedup_seeds']}) | "
            f"{row['final_accuracy_mean']:.4f} | "
            f"{', '.join(f'{a:.3f}' for a in row['final_accuracy'].values())} | "
            f"{statistics.mean(row['trainings'].values()):.0f} |"
        )
    return "\n".join(lines)


def plot(curves: dict[str, dict[int, list[Point]]], target: float, out: Path) -> None:
    """Accuracy vs simulated time, every seed, one colour per setting."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, by_seed in curves.items():
        for i, c in enumerate(by_seed.values()):
            ax.plot(
                [p["sim_time_s"] for p in c],
                [p["accuracy"] for p in c],
                color=COLORS.get(label),
                alpha=0.8,
                label=label if i == 0 else None,
            )
    ax.axhline(target, color="k", lw=0.5, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("simulated time (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every setting for every seed; print the table, write the plot (and the JSON)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trainings", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("async_study.png"))
    parser.add_argument("--json", type=Path, default=None, help="write curves and figures here")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. model=mlp")
    args = parser.parse_args(argv)
    if args.trainings < PER_ROUND:
        parser.error(f"--trainings must be >= {PER_ROUND}, got {args.trainings}")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    curves: dict[str, dict[int, list[Point]]] = {}
    with tempfile.TemporaryDirectory() as home:
        saved = {k: os.environ.get(k) for k in ("FL_EXT_HOME", "MLFLOW_TRACKING_URI")}
        os.environ["FL_EXT_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            for label in args.settings:
                curves[label] = {
                    s: one(label, s, args.trainings, args.overrides) for s in args.seeds
                }
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    figures = summary(curves, args.target)
    print(
        f"MNIST-5k, {NODES} clients, Dirichlet 0.3, mixed network, {args.trainings} client "
        f"trainings per setting, seeds {args.seeds}; simulated seconds\n"
    )
    print(table(figures, args.target))
    plot(curves, args.target, args.out)
    print(f"\nplot: {args.out}")
    if args.json is not None:
        record = {
            "target": args.target, "trainings": args.trainings, "seeds": args.seeds,
            "overrides": args.overrides, "figures": figures, "curves": curves,
        }  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1, default=str))
        print(f"figures: {args.json}")
    return figures


if __name__ == "__main__":
    main()
