"""Accuracy under differential privacy vs the same federation without it.

    python -m bench.dp_quality [--rounds 10] [--client-level-rounds 30]

MNIST-5k on the in-process driver (same strategy, ClientApp and Opacus code as ``flwr run``):
(1) 10 clients, sample-level DP-SGD at epsilon = 3, delta = 1e-5 (each client's guarantee;
the federation's is the max, by parallel composition), vs no DP; (2) 100 clients,
client-level DP-FedAvg at epsilon = 8, delta = 1e-5 with Poisson client sampling, vs no DP
with the same sampling rate. Epsilon figures come from the run's privacy ledger.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run


def one(overrides: list[str], nodes: int) -> tuple[float, float, float]:
    """Final accuracy, epsilon from the ledger (nan without DP), wall seconds."""
    built = build(compose_experiment([*overrides, "tracking=none", "fraction_evaluate=0.0"]))
    start = time.perf_counter()
    run(InProcessGrid(client_app, nodes), built)
    privacy = built.strategy.privacy
    eps = float("nan")
    if privacy is not None:
        m = privacy.ledger.metrics()
        eps = m.get("dp_epsilon_client_level", m.get("dp_epsilon_sample_level_max", eps))
    return built.history[max(built.history)], eps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--client-level-rounds", type=int, default=30)
    parser.add_argument("--client-level-q", type=float, default=0.3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    r, rc, q = args.rounds, args.client_level_rounds, args.client_level_q
    with tempfile.TemporaryDirectory() as home:
        ledger = [f"privacy.ledger_path={home}/ledger-{{}}.json"]
        rows = [
            ("10 clients, no DP", [f"num_rounds={r}"], 10),
            (
                "10 clients, DP-SGD eps=3 (sample-level)",
                [
                    f"num_rounds={r}",
                    "privacy=dp_sgd",
                    "privacy.target_epsilon=3",
                    "batch_size=64",
                    "lr=0.1",
                    "momentum=0.5",
                ],
                10,
            ),
            (
                f"100 clients, q={q}, no DP",
                [f"num_rounds={rc}", f"fraction_train={q}"],
                100,
            ),
            (
                f"100 clients, q={q}, client-level DP eps=8",
                [
                    f"num_rounds={rc}",
                    "privacy=client_level",
                    "privacy.target_epsilon=8",
                    f"privacy.sample_rate={q}",
                    "privacy.adaptive_clip=true",
                    "privacy.clip=0.5",
                ],
                100,
            ),
        ]
        print("| setting | final accuracy | epsilon (ledger) | wall s |")
        print("|---|---|---|---|")
        for i, (name, overrides, nodes) in enumerate(rows):
            extra = [ledger[0].format(i)] if any("privacy=" in o for o in overrides) else []
            acc, eps, wall = one([*overrides, *extra], nodes)
            print(f"| {name} | {acc:.4f} | {eps:.3g} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
