"""Short simulations with attacks on the in-process grid (the same code `flwr run` runs)."""

import pytest

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = [
    "dataset=digits",
    "model=mlp",
    "num_rounds=4",
    "local_epochs=3",
    "fraction_evaluate=0",
    "tracking=none",
]
GAUSSIAN = ["attack=gaussian", "attack.num_byzantine=3", "attack.omniscient.sigma=3.0"]


def final_accuracy(overrides, nodes=10):
    built = build(compose_experiment([*BASE, *overrides]))
    run(InProcessGrid(client_app, nodes), built)
    return built.history[max(built.history)]


def test_robust_rule_beats_fedavg_under_the_same_attack():
    attacked_mean = final_accuracy(GAUSSIAN)
    attacked_median = final_accuracy([*GAUSSIAN, "aggregator=median", "aggregator.f=3"])
    attacked_krum_nnm = final_accuracy(
        [*GAUSSIAN, "aggregator=multikrum", "aggregator.f=3", "preagg=[nnm]"]
    )
    attacked_fltrust = final_accuracy([*GAUSSIAN, "aggregator=fltrust"])
    assert attacked_mean < 0.3  # noise of norm ~700 (under max_update_norm) ruins the mean
    assert attacked_median > 0.8 and attacked_krum_nnm > 0.8
    assert attacked_fltrust > 0.7  # its test set is 100 smaller: the root set comes from it


@pytest.mark.parametrize("role", ["nan_update", "inf_update", "oversized", "wrong_shape"])
def test_malformed_clients_are_rejected_and_training_goes_on(role):
    built = build(compose_experiment([*BASE, "attack=malformed", f"attack.client_role={role}"]))
    seen = {}
    original = built.tracker.log_metrics
    built.tracker.log_metrics = lambda rnd, m: (seen.__setitem__(rnd, m), original(rnd, m))
    run(InProcessGrid(client_app, 8), built)
    assert all(seen[r]["clients_rejected"] == 3 for r in (1, 2, 3, 4))
    assert built.history[4] > 0.8


def test_label_flipping_runs_on_the_clients():
    clean = final_accuracy(["num_rounds=2"], nodes=6)
    flipped = final_accuracy(
        ["num_rounds=2", "attack=label_flip", "attack.num_byzantine=3"], nodes=6
    )
    assert flipped < clean - 0.05


def test_fltrust_without_a_root_set_is_a_config_error():
    from simulations.config import ConfigError

    with pytest.raises(ConfigError, match="root set"):
        build(compose_experiment([*BASE, "aggregator=fltrust", "dataset.root_size=0"]))


def test_optimized_attack_evaluates_fltrust_with_its_reference():
    # The line search aggregates candidate attacks with the server's rule: FLTrust needs the
    # round's reference update there too.
    acc = final_accuracy(["attack=ipm_opt", "attack.num_byzantine=3", "aggregator=fltrust"])
    assert acc > 0.7
