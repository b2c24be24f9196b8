"""Scale: a 1,000-client simulation on this machine, wall seconds and peak memory per round.

    python -m bench.selection_scale [--nodes 1000] [--rounds 10] [--selection oort]

MNIST-5k split over the nodes (IID), 10 clients needed per round, ``mixed`` simulated
network (availability, dropouts, over-selection, deadline), MLP, in-process driver (real
ClientApp per node, no Ray). Printed per round: wall seconds of the round and the process's
peak resident memory so far; the strategy's own bookkeeping grows with the nodes touched, not
with rounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
import warnings

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--selection", default="oort")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as home:
        os.environ["FL_EXT_HOME"] = home
        built = build(
            compose_experiment(
                [
                    f"num_rounds={args.rounds}",
                    "model=mlp",
                    "network=mixed",
                    f"selection={args.selection}",
                    f"fraction_train={10 / args.nodes}",
                    "min_train_nodes=10",
                    "min_available_nodes=10",
                    "fraction_evaluate=0.0",
                    "local_test_fraction=0.0",
                    "tracking=none",
                ]
            )
        )
        rows: list[tuple[int, float, float, float]] = []
        strategy = built.strategy
        original = strategy._run_round
        started = time.perf_counter()

        def timed(server_round, phases):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = original(server_round, phases)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append((server_round, time.perf_counter() - t0, peak, out.get("sim_round_s", 0)))
            return out

        strategy._run_round = timed  # type: ignore[method-assign]
        run(InProcessGrid(client_app, args.nodes), built)
        total = time.perf_counter() - started
    print(
        f"{args.nodes} nodes, {args.selection}, mixed network, 10 per round; total {total:.1f} s\n"
    )
    print("| round | wall s | peak RSS MB | simulated round s |")
    print("|---|---|---|---|")
    for r, wall, peak, sim in rows:
        print(f"| {r} | {wall:.2f} | {peak:.0f} | {sim:.1f} |")
    print(
        f"\nfinal accuracy {built.history[max(built.history)]:.4f}; registry holds "
        f"{len(strategy.registry.records)} of {args.nodes} nodes"
    )


if __name__ == "__main__":
    main()
