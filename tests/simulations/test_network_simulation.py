"""Simulated heterogeneity on the virtual clock: dropouts, deadlines, fallback, metrics."""

import itertools
import math

import pytest
from mlflow.tracking import MlflowClient

from fl_ext.selection.network import SimulatedNetwork
from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = ["dataset=digits", "model=mlp", "num_rounds=5", "fraction_evaluate=0.0"]


def test_profiles_are_seeded_and_round_times_follow_the_bytes():
    a, b = SimulatedNetwork(profile="mixed", seed=1), SimulatedNetwork(profile="mixed", seed=1)
    assert [a.node(n) for n in range(20)] == [b.node(n) for n in range(20)]
    assert [a.online(n, 3) for n in range(20)] == [b.online(n, 3) for n in range(20)]
    p = a.node(7)
    t = a.round_time(7, compute_s=0.5, bytes_down=10**6, bytes_up=2 * 10**6)
    want = 0.5 * p.speed + 8 / p.down_mbps + 16 / p.up_mbps + 2 * p.latency_s
    assert math.isclose(t, want)
    ideal = SimulatedNetwork(profile="ideal")
    assert ideal.round_time(1, 0.5, 10**9, 10**9) == 0.5 and ideal.online(1, 9)


def test_mixed_network_round_with_over_selection_dropouts_and_clock():
    built = build(
        compose_experiment([*BASE, "network=mixed", "selection=oort", "fraction_train=0.4"])
    )
    run(InProcessGrid(client_app, 20), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    run_id = found.info.run_id
    sim = [m.value for m in client.get_metric_history(run_id, "time/sim_s")]
    assert len(sim) == 5 and all(
        b > a for a, b in itertools.pairwise(sim)
    )  # the clock only advances
    m = found.data.metrics
    for key in ("clients/dropped", "clients/late", "clients/completed", "time/straggler_index"):
        assert key in m
    selected = [x.value for x in client.get_metric_history(run_id, "clients/selected")]
    online = max(selected)
    assert online <= 20 and min(selected) >= 1
    # the registry's speed estimates are the clock's round times (network included), which
    # for the mixed profile are far above the in-process compute times
    durations = [r.duration_s for r in built.strategy.registry.records.values() if r.duration_s]
    assert durations and min(durations) > 0.02
    assert max(built.history.values()) > built.history[0] + 0.1  # it learns; speed: the study


def test_fixed_deadline_nobody_meets_keeps_the_model():
    built = build(
        compose_experiment(
            [*BASE, "network=mobile", "network.deadline_s=0.001", "tracking=none", "num_rounds=2"]
        )
    )
    run(InProcessGrid(client_app, 6), built)
    assert built.history[2] == built.history[0]  # every round fell back
    assert "global model kept" in built.strategy.round_log.skipped


def test_bad_network_settings():
    with pytest.raises(ConfigError, match="over_selection"):
        build(
            compose_experiment(
                [*BASE, "network=mixed", "network.over_selection=0.5", "tracking=none"]
            )
        )
    with pytest.raises(ConfigError, match="not one of"):
        build(
            compose_experiment(
                [*BASE, "network=mixed", "network.profile=satellite", "tracking=none"]
            )
        )


def test_measured_network_runs_the_same_rules_on_wall_times():
    """``network=measured``: no simulated devices; a slow node is not waited for."""
    built = build(
        compose_experiment(
            [*BASE, "num_rounds=3", "network=measured", "fraction_train=0.5", "round_timeout=20"]
        )
    )
    slow = 0  # partition id
    run(InProcessGrid(client_app, 6, reply_delay_s=lambda pid: 2.5 if pid == slow else 0.0), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    metrics = {
        k: [
            m.value
            for m in sorted(client.get_metric_history(found.info.run_id, k), key=lambda m: m.step)
        ]
        for k in ("time/round_s", "clients/completed", "clients/selected", "time/round_close_s")
    }
    assert "time/sim_s" not in found.data.metrics  # no virtual clock here
    assert metrics["clients/selected"][0] == 4  # 1.3 x the 3 needed, rounded up
    assert all(c == 3 for c in metrics["clients/completed"])
    # never waited for the 2.5 s node: 3 of the 4 asked completed every round (above)
    assert built.history[3] > 0.5


def test_client_level_dp_waits_for_every_sampled_node_on_a_measured_clock():
    """Poisson sampling is the selection: no over-selection, no early stop."""
    dp = [
        "privacy=client_level",
        "privacy.noise_multiplier=0.5",
        "privacy.sample_rate=1.0",
        "privacy.target_epsilon=null",
    ]
    built = build(compose_experiment([*BASE, "num_rounds=2", "network=measured", *dp]))
    run(InProcessGrid(client_app, 5, reply_delay_s=lambda pid: 0.3 if pid == 4 else 0.0), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    completed = [m.value for m in client.get_metric_history(found.info.run_id, "clients/completed")]
    assert completed == [5.0, 5.0] and found.data.metrics["clients/round_skipped"] == 0
