"""Sub-model study: weak devices on capacity-scaled sub-models vs the two usual workarounds.

    python -m simulations.submodel_study [--rounds 20] [--seeds 0] [--json PATH] [overrides ...]

MNIST-5k over 20 IID clients in three capacity tiers (7 of width 0.25, 7 of 0.5, 6 of 1:
each tier holds the leading share of every hidden layer's channels), the CNN, every client
in every round. Settings:

* ``heterofl``: each tier trains its static slice; the server averages per coordinate;
* ``fjord``: the same slices, trained with ordered dropout (a random width <= the tier's per
  batch), so every narrower width stays a usable model;
* ``fedrolex``: the weak tiers' window of channels rolls by one each round;
* ``smallest``: everybody trains only the model every client can hold (width 0.25);
* ``exclude``: only the 6 strong clients train the full model (the weak tiers' data unused).

Each run is the real experiment (engine, ClientApp, checks) on the in-process grid, tracking
off. Prints a markdown table: the final accuracy of the global model at every width on the
server's held-out split (a width is the leading slice, evaluated as its own model), the
measured bytes up and down per client and round in each tier, and the mean reported training
time per tier; ``--json`` writes every figure. Anchors (full MNIST, 60k, their CNN): HeteroFL
reports 99.47 % for the full model and 98.46 % for its smallest (a = 0.0625 of the
channels) in its IID setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

NODES = 20
WIDTHS = (0.25, 0.5, 1.0)
SHARES = "[0.35,0.35,0.3]"  # 7 / 7 / 6 of 20
TIERS = [f"submodel.widths=[{','.join(f'{w:g}' for w in WIDTHS)}]", f"submodel.shares={SHARES}"]
SETTINGS: dict[str, list[str]] = {
    "heterofl": ["submodel=heterofl", *TIERS],
    "fjord": ["submodel=fjord", *TIERS],
    "fedrolex": ["submodel=fedrolex", *TIERS],
    "smallest": ["submodel=heterofl", "submodel.widths=[0.25,1.0]", "submodel.shares=[1,0]"],
    "exclude": ["submodel=heterofl", "submodel.policy=exclude", *TIERS],
}
BASE = [
    "dataset=mnist5k",
    "model=cnn",
    "partition=iid",
    "fraction_train=1.0",
    "fraction_evaluate=0.0",
    "tracking=none",
    "checkpoint.enabled=false",
    f"min_available_nodes={NODES}",
]


def one(label: str, seed: int, rounds: int, extra: list[str]) -> dict[str, Any]:
    """One setting, one seed: final accuracy per width, bytes and compute per tier."""
    overrides = [*BASE, *SETTINGS[label], f"num_rounds={rounds}", f"seed={seed}", *extra]
    built = build(compose_experiment(overrides))
    result = run(InProcessGrid(client_app, NODES), built)
    last = max(result.evaluate_metrics_serverapp)
    central = {k: float(v) for k, v in result.evaluate_metrics_serverapp[last].items()}  # type: ignore[arg-type]
    accuracy = {f"{w:g}": float(central.get(f"accuracy_w{w:g}", float("nan"))) for w in WIDTHS}
    accuracy["1"] = float(central["accuracy"])
    if label == "smallest":  # its global model is only ever trained at width 0.25
        accuracy = {"0.25": accuracy["0.25"], "0.5": float("nan"), "1": float("nan")}
    tiers: dict[str, dict[str, float]] = {}
    rounds_done = sorted(result.train_metrics_clientapp)
    rows: list[dict[str, float]] = [
        {k: float(v) for k, v in result.train_metrics_clientapp[r].items()}  # type: ignore[arg-type]
        for r in rounds_done
    ]
    for w in WIDTHS:
        key = f"{w:g}"
        trained = sum(row.get(f"clients_width_{key}", 0.0) for row in rows)
        if trained == 0:
            continue
        computes = [row[f"compute_w{key}_s"] for row in rows if f"compute_w{key}_s" in row]
        tiers[key] = {
            "client_rounds": float(trained),
            "kb_up_per_client_round": sum(row.get(f"bytes_up_w{key}", 0.0) for row in rows)
            / trained
            / 1e3,
            "kb_down_per_client_round": sum(row.get(f"bytes_down_w{key}", 0.0) for row in rows)
            / trained
            / 1e3,
            "train_s_per_client_round": statistics.fmean(computes) if computes else float("nan"),
        }
    return {"accuracy": accuracy, "tiers": tiers, "rounds": last}


def mean_over(runs: list[dict[str, Any]], path: tuple[str, ...]) -> float:
    """The mean over seeds of the figure at ``path`` (nan where no run has it)."""
    values = []
    for r in runs:
        value: Any = r
        for key in path:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        if isinstance(value, float):
            values.append(value)
    return statistics.fmean(values) if values else float("nan")


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: accuracy per width, then KB up / KB down / train s per client-round per tier."""
    head = "| setting | acc w=0.25 | acc w=0.5 | acc w=1 | " + " | ".join(
        f"tier {w:g}: KB up / down, train s" for w in WIDTHS
    )
    lines = [head + " |", "|" + "---|" * (4 + len(WIDTHS))]
    for label, runs in results.items():
        cells = [label]
        cells += [_fmt(mean_over(runs, ("accuracy", f"{w:g}"))) for w in WIDTHS]
        for w in WIDTHS:
            key = f"{w:g}"
            up = mean_over(runs, ("tiers", key, "kb_up_per_client_round"))
            down = mean_over(runs, ("tiers", key, "kb_down_per_client_round"))
            secs = mean_over(runs, ("tiers", key, "train_s_per_client_round"))
            cells.append("not trained" if math.isnan(up) else f"{up:.0f} / {down:.0f}, {secs:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every setting for every seed; print the table (and write the JSON)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. local_epochs=1")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    results = {
        label: [one(label, s, args.rounds, args.overrides) for s in args.seeds]
        for label in args.settings
    }
    print(
        f"MNIST-5k, {NODES} IID clients in tiers 0.25 / 0.5 / 1 (7 / 7 / 6), CNN, "
        f"{args.rounds} rounds, seeds {args.seeds}; accuracy on the server's held-out split\n"
    )
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": args.rounds, "seeds": args.seeds,
                                         "results": results}, indent=2))  # fmt: skip
        print(f"\nfigures: {args.json}")
    return results


if __name__ == "__main__":
    main()
