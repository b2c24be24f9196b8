"""Run names carry every choice and key that differs from conf/config.yaml's defaults."""

import pytest
from hydra import compose, initialize_config_dir

from simulations.config import CONF_DIR, compose_experiment
from simulations.naming import MAX_LENGTH, run_name

BASE = ["dataset=digits", "model=mlp"]
# the ten runs of the issue, all once named fedavg-digits-iid-mlp-seed0
DIFFERENT = [
    [],
    ["privacy=client_level"],
    ["codec=int8"],
    ["aggregator=median"],
    ["attack=gaussian", "attack.num_byzantine=1"],
    ["selection=oort"],
    ["network=mobile"],
    ["partition=dirichlet", "partition.alpha=0.3"],
    ["partition=dirichlet"],
    ["lr=0.1"],
]


def _name(overrides):
    return run_name(compose_experiment([*BASE, *overrides]))


def test_runs_that_differ_have_different_names():
    names = [_name(o) for o in DIFFERENT]
    assert len(set(names)) == len(DIFFERENT), names
    assert names[0] == "fedavg-digits-iid-mlp-seed0"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "fedavg-mnist5k-iid-cnn-seed0"),
        (["seed=3", "lr=0.1"], "fedavg-mnist5k-iid-cnn-seed3 lr=0.1"),
        (
            ["partition=dirichlet", "partition.alpha=0.3"],
            "fedavg-mnist5k-dirichlet-cnn-seed0 partition.alpha=0.3",
        ),
        (
            ["aggregator=krum", "aggregator.f=2", "preagg=[nnm]", "attack=alie"],
            "fedavg-krum-nnm-vs-alie-mnist5k-iid-cnn-seed0 aggregator.f=2",
        ),
        (
            ["privacy=dp_sgd", "codec=topk", "codec.error_feedback=false", "network=mobile"],
            "fedavg-mnist5k-iid-cnn-seed0 privacy=dp_sgd codec=topk network=mobile "
            "codec.error_feedback=false",
        ),
        (["strategy=fedprox"], "fedprox-mnist5k-iid-cnn-seed0"),
        (["evaluate_with_train=true"], "fedavg-mnist5k-iid-cnn-seed0 evaluate_with_train=true"),
    ],
)
def test_name(overrides, expected):
    assert run_name(compose_experiment(overrides)) == expected


def test_a_key_that_follows_another_is_named_once():
    """strategy.fraction_train and selection.fraction follow fraction_train by interpolation."""
    assert _name(["fraction_train=0.5"]) == "fedavg-digits-iid-mlp-seed0 fraction_train=0.5"
    # ... but set on its own, it is named
    assert _name(["selection.fraction=0.5"]).endswith(" selection.fraction=0.5")


def test_tracking_and_checkpoint_keys_are_not_named():
    name = _name(["tracking.experiment=x", "checkpoint.enabled=false", "aggregation_device=cpu"])
    assert name == "fedavg-digits-iid-mlp-seed0"


def test_long_names_are_bounded_and_still_distinct():
    many = [
        "aggregator=krum", "aggregator.f=1", "preagg=[arc,nnm]", "attack=alie",
        "privacy=client_level", "codec=int8", "selection=oort", "network=mobile",
        "partition=dirichlet", "partition.alpha=0.3", "momentum=0.5", "batch_size=64",
        "local_epochs=3", "fraction_evaluate=0.2",
    ]  # fmt: skip
    a, b = _name([*many, "lr=0.1"]), _name([*many, "lr=0.2"])
    assert len(a) <= MAX_LENGTH and len(b) <= MAX_LENGTH
    assert a != b and a.startswith("fedavg-krum-arc+nnm-vs-alie-digits-dirichlet-mlp-seed0 ")


def test_named_inside_a_running_hydra_app():
    """The robustness matrix builds runs inside @hydra.main (GlobalHydra initialized)."""
    experiment = compose_experiment([*BASE, "lr=0.1"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        compose(config_name="config")
        assert run_name(experiment) == "fedavg-digits-iid-mlp-seed0 lr=0.1"
        compose(config_name="config")  # the app's Hydra still works
