"""Per-round wall time of one experiment on a real local deployment vs in simulation.

    python -m bench.deployment [--rounds 8] [--nodes 2] [--dataset digits] [--model mlp]

The same Hydra config runs, one after the other in this process's control:
(a) ``flwr run`` on a simulation SuperLink (Ray, ``--federation-config num-supernodes``);
(b) ``flwr run`` on a local deployment with TLS and SuperNode authentication;
(c) the same deployment without TLS (``--insecure``), to isolate what TLS costs;
(d) the TLS deployment with ``evaluate_with_train=true`` (one exchange per round);
(e) the in-process grid (no Flower runtime at all), the floor.
Round times come from the MLflow metrics each run records (``round_time_s``, median over the
rounds after the first). Beside them, the pieces a deployment adds per message: starting a
ClientApp process (the SuperNode starts ``flwr-clientapp`` for every message; measured as
the interpreter start + import of our ClientApp), and (de)serialising the model record.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from fl_ext.params import get_weights
from fl_ext.security import generate_material
from fl_ext.tracking import metric_key
from flwr_records import named_array_record
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.deployment import CONNECTION, LocalDeployment
from simulations.flwr_cli import run_app
from simulations.inprocess import InProcessGrid
from simulations.local_superlink import LocalSuperLink
from simulations.run_loop import run
from strategies.wire import wire_copy


def _round_stats(db: Path, experiment: str) -> dict[str, float]:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    out = {}
    for key in ("round_time_s", "train_time_s", "train_reply_s_median", "test_accuracy"):
        values = [
            m.value
            for m in sorted(
                client.get_metric_history(found.info.run_id, metric_key(key)), key=lambda m: m.step
            )
        ]
        if key == "test_accuracy":
            out[key] = values[-1]
        else:
            steady = values[1:] or values
            out[key] = statistics.median(steady)
    return out


def _node_timeline(log_paths: list[Path], message_type: str = "train") -> dict[str, float]:
    """Median seconds per ``message_type`` message on the SuperNodes, from their timed logs.

    pickup: received -> ClientApp process started (SuperExec polling); clientapp: process
    start -> reply handed back (interpreter, imports, our work); upload: sending -> sent.
    """
    spans: dict[str, list[float]] = {"pickup": [], "clientapp": [], "upload": []}
    for path in log_paths:
        current: dict[str, float] = {}
        kind = None
        for raw in path.read_text(errors="replace").splitlines():
            stamp, _, text = raw.partition(" ")
            try:
                t = float(stamp)
            except ValueError:
                continue
            if "Receiving:" in text:
                kind, current = text.split("Receiving:")[1].split()[0], {"recv": t}
            elif "Start `flwr-clientapp` process" in text:
                current["start"] = t
            elif "Sending:" in text:
                current["send"] = t
            elif "Sent successfully" in text and kind == message_type and len(current) == 3:
                spans["pickup"].append(current["start"] - current["recv"])
                spans["clientapp"].append(current["send"] - current["start"])
                spans["upload"].append(t - current["send"])
                current = {}
    return {k: statistics.median(v[1:] or v) for k, v in spans.items() if v}


def _client_process_start_s(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import simulations.client_app"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _serialization_s(overrides: list[str]) -> tuple[float, int]:
    built = build(compose_experiment([*overrides, "tracking=none"]))
    record = named_array_record(get_weights(built.model))
    from flwr.app import RecordDict

    content = RecordDict({"arrays": record})
    started = time.perf_counter()
    for _ in range(20):
        wire_copy(content)
    nbytes = sum(a.nbytes for a in get_weights(built.model).values())
    return (time.perf_counter() - started) / 20, nbytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="mlp")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    os.environ["FL_EXT_HOME"] = str(root / "fl-ext")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    db = root / "fl-ext" / "mlflow.db"
    base = [
        f"dataset={args.dataset}",
        f"model={args.model}",
        f"num_rounds={args.rounds}",
        "local_epochs=1",
        "fraction_evaluate=1.0",
        f"min_available_nodes={args.nodes}",
        "checkpoint.enabled=true",
    ]
    env = {"FL_EXT_HOME": os.environ["FL_EXT_HOME"]}
    results: dict[str, dict[str, float]] = {}

    with LocalSuperLink(root / "sim-home", extra_env=env) as link:
        outcome = run_app(
            link, [*base, "tracking.experiment=sim"], num_supernodes=args.nodes, cpus_per_client=1
        )
        assert outcome.ok, outcome.output[-2000:]
    results["simulation (flwr run, Ray)"] = _round_stats(db, "sim")

    material = generate_material(root / "material", hosts=["127.0.0.1"], num_nodes=args.nodes)
    for label, tls, name, extra in (
        ("deployment, TLS + node auth", True, "tls", []),
        ("deployment, insecure", False, "plain", []),
        ("deployment, TLS, evaluate_with_train", True, "tls-evtrain", ["evaluate_with_train=true"]),
    ):
        with LocalDeployment(
            root / f"{name}-home", material, num_nodes=args.nodes, tls=tls, extra_env=env
        ) as dep:
            outcome = run_app(
                dep,
                [*base, *extra, f"tracking.experiment={name}"],
                connection=CONNECTION,
                num_supernodes=None,
            )
            assert outcome.ok, outcome.output[-2000:]
            logs = [dep.flwr_home / f"supernode-{i}.log" for i in range(args.nodes)]
        results[label] = {**_round_stats(db, name), **_node_timeline(logs)}

    built = build(compose_experiment([*base, "tracking.experiment=inproc"]))
    run(InProcessGrid(client_app, args.nodes), built)
    results["in-process grid (no runtime)"] = _round_stats(db, "inproc")

    start_s = _client_process_start_s()
    ser_s, nbytes = _serialization_s(base)
    sim = results["simulation (flwr run, Ray)"]["round_time_s"]
    print(
        f"\n{args.nodes} nodes, {args.dataset}/{args.model}, {args.rounds} rounds, 1 local epoch, "
        "federated + centralized evaluation; medians over rounds 2..N\n"
    )
    print("| setting | round s | train exchange s | reply s (median) | vs simulation | final acc |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['round_time_s']:.2f} | {r['train_time_s']:.2f} | "
            f"{r.get('train_reply_s_median', float('nan')):.2f} | {r['round_time_s'] / sim:.2f}x | "
            f"{r['test_accuracy']:.3f} |"
        )
    tls = results["deployment, TLS + node auth"]["round_time_s"]
    plain = results["deployment, insecure"]["round_time_s"]
    print(
        "\nOne train message on a deployment (medians; seconds from the ServerApp's push to its pull):"
    )
    print(
        "| setting | reply s | receipt -> ClientApp start | ClientApp process | upload | waits (node fleet poll 0-3 s, server pull) |"
    )
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        if "clientapp" in r and "train_reply_s_median" in r:
            rest = r["train_reply_s_median"] - r["pickup"] - r["clientapp"] - r["upload"]
            print(
                f"| {label} | {r['train_reply_s_median']:.2f} | {r['pickup']:.2f} | {r['clientapp']:.2f} | "
                f"{r['upload']:.2f} | {rest:.2f} |"
            )
    print("\nWhere a deployment round goes (2 exchanges per round: train + evaluate):")
    print(
        f"- ClientApp process start per message (interpreter + imports): {start_s:.2f} s "
        f"-> about {2 * start_s:.2f} s per round on each node (nodes run in parallel; "
        f"{os.cpu_count()} cores here)"
    )
    print(
        f"- serialisation of the model record ({nbytes / 1e6:.2f} MB, deflate + inflate): "
        f"{ser_s * 1e3:.2f} ms per message"
    )
    print(
        f"- TLS + node authentication vs insecure: {tls - plain:+.2f} s per round ({tls / plain:.2f}x)"
    )


if __name__ == "__main__":
    main()
