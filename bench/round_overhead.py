"""Per-round cost of our strategy vs Flower's built-in FedAvg, in one simulation run.

    python -m bench.round_overhead [--rounds 5] [--repeats 3] [--nodes 10] [--dataset mnist5k]
    python -m bench.round_overhead --server-only     # the server-side row alone

One Flower simulation (Ray, real SuperNodes) runs a ServerApp that starts, interleaved and
repeated, (a) ``flwr.serverapp.strategy.FedAvg``, (b) ``FlExtFedAvg`` without tracking and
(c) ``FlExtFedAvg`` with MLflow tracking, each for the same rounds from the same initial
model, with the same ClientApp, data, federated and centralized evaluation. The same three are
then timed on the in-process grid (no Ray, no SuperLink), where the strategy's own cost is a
larger share of the round. Prints a markdown table: median seconds per round and the ratio
to Flower's FedAvg.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_ext.tracking import MlflowTracker
from flwr_records import named_array_record
from simulations.build import Built, build
from simulations.central_eval import central_evaluate
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.nodes import wait_for_nodes

ARMS = ("flower FedAvg", "fl-ext, tracking off", "fl-ext, MLflow tracking")


def _strategy(arm: str, built: Built) -> tuple[FedAvg, dict]:
    conf = built.experiment.cfg
    common = {"fraction_train": conf.fraction_train, "fraction_evaluate": conf.fraction_evaluate}
    if arm == ARMS[0]:
        return FedAvg(**common), {}
    strategy = FlExtFedAvg(**common, max_examples_per_client=len(built.split.train), seed=conf.seed)
    if arm == ARMS[1]:
        return strategy, {}
    tracker = MlflowTracker(
        uri=f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}", experiment="bench"
    )
    tracker.start(run_name="bench", params={}, tags={})
    return strategy, {"on_round_end": tracker.log_metrics}


def time_arms(grid: Grid, built: Built, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per round for each arm, ``repeats`` times, interleaved."""
    initial = named_array_record({k: v.numpy().copy() for k, v in built.model.state_dict().items()})
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    evaluate_fn: Callable = lambda rnd, arrays: central_evaluate(built, rnd, arrays)  # noqa: E731
    for rep in range(repeats):
        for arm in ARMS[rep % 3 :] + ARMS[: rep % 3]:  # rotate: no arm always runs first
            strategy, extra = _strategy(arm, built)
            started = time.perf_counter()
            strategy.start(
                grid,
                initial,
                num_rounds=rounds,
                train_config=ConfigRecord(dict(built.train_config)),
                evaluate_config=ConfigRecord(dict(built.evaluate_config)),
                evaluate_fn=evaluate_fn,
                **extra,
            )
            times[arm].append((time.perf_counter() - started) / rounds)
    return times


def server_side_ms(built: Built, nodes: int, repeats: int = 20) -> dict[str, list[float]]:
    """Milliseconds per round spent in the strategy itself (configure + aggregate + tracking).

    The replies of one real round are recorded once on the in-process grid and replayed, so
    client training and transport are excluded and only the server-side work is timed.
    """
    grid = InProcessGrid(client_app, nodes)
    initial = named_array_record({k: v.numpy().copy() for k, v in built.model.state_dict().items()})
    train_config = ConfigRecord(dict(built.train_config))
    evaluate_config = ConfigRecord(dict(built.evaluate_config))
    recorder = FlExtFedAvg(fraction_evaluate=built.experiment.cfg.fraction_evaluate)
    train_replies = list(
        grid.send_and_receive(recorder.configure_train(1, initial, train_config, grid))
    )
    eval_replies = list(
        grid.send_and_receive(recorder.configure_evaluate(1, initial, evaluate_config, grid))
    )
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(repeats):
        for arm in ARMS:
            strategy, extra = _strategy(arm, built)
            notify = extra.get("on_round_end", lambda _r, _m: None)
            started = time.perf_counter()
            list(strategy.configure_train(1, initial, ConfigRecord(dict(train_config)), grid))
            strategy.aggregate_train(1, train_replies)
            list(strategy.configure_evaluate(1, initial, ConfigRecord(dict(evaluate_config)), grid))
            strategy.aggregate_evaluate(1, eval_replies)
            if isinstance(strategy, FlExtFedAvg):
                notify(1, strategy.round_log.metrics())
            times[arm].append((time.perf_counter() - started) * 1000)
    return times


def table(title: str, times: dict[str, list[float]], unit: str = "s/round") -> str:
    base = statistics.median(times[ARMS[0]])
    lines = [
        f"**{title}**",
        "",
        f"| strategy | {unit} median | min | max | runs | median ratio to Flower FedAvg |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        runs = times[arm]
        med = statistics.median(runs)
        lines.append(
            f"| {arm} | {med:.3f} | {min(runs):.3f} | {max(runs):.3f} | {len(runs)} | {med / base:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--model", default="cnn")
    parser.add_argument(
        "--server-only",
        action="store_true",
        help="only the server-side row (replayed replies; no simulation, a minute)",
    )
    args = parser.parse_args()
    overrides = [f"dataset={args.dataset}", f"model={args.model}", "tracking=none"]
    built = build(compose_experiment(overrides))
    if args.server_only:
        server = server_side_ms(built, args.nodes)
        print(
            table(
                f"Server-side work only (replayed replies), {args.nodes} nodes", server, "ms/round"
            )
        )
        return
    results: dict[str, dict[str, list[float]]] = {}

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        wait_for_nodes(grid, args.nodes, timeout=120)
        results["sim"] = time_arms(grid, built, args.rounds, args.repeats)

    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.nodes,
        backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0}},
    )
    results["inprocess"] = time_arms(
        InProcessGrid(client_app, args.nodes), built, args.rounds, args.repeats
    )
    setup = f"{args.dataset}, {args.model}, {args.nodes} nodes, {args.rounds} rounds x {args.repeats} repeats"
    print()
    print(table(f"Flower simulation (Ray), {setup}", results["sim"]))
    print()
    print(table(f"In-process grid (no Ray), {setup}", results["inprocess"]))
    print()
    server = server_side_ms(built, args.nodes)
    print(
        table(f"Server-side work only (replayed replies), {args.nodes} nodes", server, "ms/round")
    )
    round_s = statistics.median(results["sim"][ARMS[0]])
    for arm in ARMS[1:]:
        extra_ms = statistics.median(server[arm]) - statistics.median(server[ARMS[0]])
        print(
            f"- {arm}: {extra_ms:+.1f} ms/round vs Flower = {extra_ms / 10 / round_s:+.2f} % of a simulated round"
        )


if __name__ == "__main__":
    main()
