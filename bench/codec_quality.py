"""Upload bytes and accuracy per codec on MNIST-5k, vs float32 FedAvg, same seed and rounds.

    python -m bench.codec_quality [--rounds 15] [--nodes 10] [--codecs none int8 topk_int8 ...]

Each codec runs the same experiment on the in-process driver (the same strategy, ClientApp
and codec code as ``flwr run``) with MLflow tracking in a temporary directory; bytes are the
serialized reply records the server received. Printed: compression ratio of the total upload,
upload bytes until the test accuracy first reaches the target (0.90), final accuracy and its
difference to float32.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings

from mlflow.tracking import MlflowClient

from fl_ext.tracking import metric_key, resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

CODECS = [
    "none",
    "float16",
    "int8",
    "int4",
    "qsgd",
    "ternary",
    "sign",
    "topk",
    "topk_int8",
    "topk_int4",
]


def one(
    codec: str, rounds: int, nodes: int, extra: list[str]
) -> tuple[dict[int, float], dict[int, float]]:
    """Accuracy and cumulative upload bytes per round."""
    built = build(
        compose_experiment(
            [
                f"codec={codec}",
                f"num_rounds={rounds}",
                "fraction_evaluate=0.0",
                *extra,
                f"tracking.experiment=codec-{codec}",
                "tracking.register_model=false",
            ]
        )
    )
    run(InProcessGrid(client_app, nodes), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name(f"codec-{codec}")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    history = client.get_metric_history(found.info.run_id, metric_key("bytes_up_cum"))
    up = {m.step: m.value for m in history}
    return dict(built.history), up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--codecs", nargs="+", default=CODECS)
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. model=mlp")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as home:
        os.environ["FL_EXT_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        results = {c: one(c, args.rounds, args.nodes, args.overrides) for c in args.codecs}
    base_acc, base_up = results.get("none", next(iter(results.values())))
    total_base = base_up[max(base_up)]
    final_base = base_acc[max(base_acc)]
    print(f"MNIST-5k, {args.nodes} clients, {args.rounds} rounds; target accuracy {args.target}\n")
    print(
        "| codec | upload ratio vs float32 | upload MB to reach target | final accuracy | vs float32 (points) |"
    )
    print("|---|---|---|---|---|")
    for codec, (acc, up) in results.items():
        reached = next((r for r in sorted(acc) if r > 0 and acc[r] >= args.target), None)
        to_target = f"{up[reached] / 1e6:.2f} (round {reached})" if reached else "not reached"
        final = acc[max(acc)]
        print(
            f"| {codec} | {total_base / up[max(up)]:.1f}x | {to_target} | {final:.4f} | "
            f"{100 * (final - final_base):+.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
