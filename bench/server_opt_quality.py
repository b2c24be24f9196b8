"""Server optimizers under label skew: FedAvg vs FedAvgM vs FedAdam (vs FedYogi), same rounds.

    python -m bench.server_opt_quality [--rounds 10] [--alpha 0.3] [--json PATH]

MNIST-5k, the default CNN and client settings, 10 clients with a Dirichlet(alpha) label
split, on the in-process driver (the same strategy and ClientApp code as ``flwr run``). Every
setting sees the same partitions, seeds and client updates of round 1; they differ only in
how the server turns the aggregate into a step (``server_opt``). Final and best centralized
test accuracy; one seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

SETTINGS = {
    "FedAvg": [],
    "FedAvgM (lr 1, momentum 0.9)": ["server_opt=fedavgm"],
    "FedAvgM (lr 1, momentum 0.5)": ["server_opt=fedavgm", "server_opt.momentum=0.5"],
    "FedAdam (eta 0.01)": ["server_opt=fedadam", "server_opt.eta=0.01"],
    "FedAdam (eta 0.003)": ["server_opt=fedadam", "server_opt.eta=0.003"],
    "FedYogi (eta 0.01)": ["server_opt=fedyogi", "server_opt.eta=0.01"],
}


def one(extra: list[str], rounds: int, alpha: float, seed: int) -> dict[str, float]:
    """Final and best test accuracy and wall seconds of one setting."""
    overrides = [
        f"num_rounds={rounds}",
        "partition=dirichlet",
        f"partition.alpha={alpha}",
        f"seed={seed}",
        "fraction_evaluate=0.0",
        "tracking=none",
        "checkpoint.enabled=false",
        *extra,
    ]
    built = build(compose_experiment(overrides))
    start = time.perf_counter()
    run(InProcessGrid(client_app, 10), built)
    curve = [built.history[r] for r in sorted(built.history)]
    return {"final": curve[-1], "best": max(curve), "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="setting names to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = {}
    with tempfile.TemporaryDirectory() as home:
        import os

        os.environ["FL_EXT_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for name, extra in SETTINGS.items():
            if args.only and name not in args.only:
                continue
            rows[name] = one(extra, args.rounds, args.alpha, args.seed)
    print(
        f"MNIST-5k, 10 clients, Dirichlet alpha {args.alpha}, {args.rounds} rounds, seed {args.seed}"
    )
    print("| server optimizer | final accuracy | best accuracy | wall s |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['final']:.4f} | {r['best']:.4f} | {r['wall_s']:.0f} |")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
