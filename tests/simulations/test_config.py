import pytest
import torch
from omegaconf import OmegaConf

from simulations import override_check
from simulations.build import build, check_aggregation, check_partitions
from simulations.config import CONF_DIR, ConfigError, compose_experiment, parse_overrides


def test_default_experiment():
    exp = compose_experiment([])
    assert exp.choices == {
        "strategy": "fedavg",
        "aggregator": "mean",
        "preagg": "none",
        "attack": "none",
        "privacy": "none",
        "codec": "none",
        "selection": "uniform",
        "network": "none",
        "server_opt": "none",
        "secagg": "none",
        "driver": "sync",
        "preprocessing": "none",
        "submodel": "none",
        "adapter": "none",
        "dataset": "mnist5k",
        "partition": "iid",
        "model": "cnn",
        "tracking": "mlflow",
    }
    conf = exp.resolved()
    assert conf["strategy"]["seed"] == conf["seed"] == 0
    assert conf["strategy"]["fraction_train"] == conf["fraction_train"]


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
@pytest.mark.parametrize("dataset", ["mnist5k", "digits"])
@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_combination_builds(strategy, dataset, partition, model):
    exp = compose_experiment(
        [
            f"strategy={strategy}",
            f"dataset={dataset}",
            f"partition={partition}",
            f"model={model}",
            "tracking=none",
        ]
    )
    built = build(exp)
    check_partitions(built, 10)
    assert built.train_config["dataset-hash"] == built.split.content_hash
    assert built.model(torch.from_numpy(built.split.test.x[:2])).shape == (2, 10)


AGGREGATORS = [
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "fltrust",
]


@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("preagg", ["[]", "[nnm]", "[arc,nnm]", "[bucketing]", "[clip]"])
def test_every_aggregation_builds_for_13_nodes(aggregator, preagg):
    f_override = [] if aggregator == "mean" else ["aggregator.f=1"]
    exp = compose_experiment(
        [f"aggregator={aggregator}", *f_override, f"preagg={preagg}", "tracking=none"]
    )
    built = build(exp)
    check_aggregation(built, 13)
    assert built.strategy.aggregation.pipeline.rule.f == (1 if aggregator != "mean" else 0)


def test_issue_example_krum_f3_with_nnm():
    exp = compose_experiment(["aggregator=krum", "aggregator.f=3", "preagg=[nnm]", "tracking=none"])
    built = build(exp)
    assert built.strategy.aggregation.describe() == "NNM -> Krum(f=3)"
    assert built.strategy.aggregation.pipeline.preagg[0].f == 3  # NNM follows aggregator.f
    assert exp.choices["preagg"] == "nnm"
    check_aggregation(built, 13)
    with pytest.raises(
        ConfigError, match=r"needs at least 9 updates per round \(Krum: n > 2f \+ 2\)"
    ):
        check_aggregation(built, 8)


def test_bulyan_with_too_few_nodes_fails_at_start():
    built = build(compose_experiment(["aggregator=bulyan", "aggregator.f=3", "tracking=none"]))
    with pytest.raises(ConfigError, match=r"n >= 4f \+ 3"):
        check_aggregation(built, 13)
    built = build(
        compose_experiment(
            ["aggregator=bulyan", "aggregator.f=2", "fraction_train=0.5", "tracking=none"]
        )
    )
    with pytest.raises(ConfigError, match=r"fraction_train=0\.5 of 13 nodes selects 7"):
        check_aggregation(built, 13)


def test_unknown_aggregator_and_preagg_list_options():
    with pytest.raises(ConfigError, match="Available options in 'aggregator'"):
        compose_experiment(["aggregator=average"])
    with pytest.raises(ConfigError, match="Available options in 'preagg'"):
        compose_experiment(["preagg=[mixing]"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["aggregator=krum", "aggregator.f=-1"], "f"),
        (["aggregator=centered_clipping", "aggregator.tau=0"], "tau"),
        (["preagg=[bucketing]", "preagg.bucketing.s=0"], "bucket size"),
        (["preagg=[clip]", "preagg.clip.c=0"], "clipping threshold"),
        (["aggregation_device=tpu"], r"'tpu' is not one of auto, cpu, cuda, cuda:N"),
        (["aggregation_device=cuda:7"], r"'cuda:7' requested but this machine has \d+ GPU"),
    ],
)
def test_invalid_aggregation_parameters(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment([*overrides, "tracking=none"]))


def test_overrides_string_as_in_the_run_config():
    exp = compose_experiment(
        'strategy=fedprox dataset=digits partition=dirichlet partition.alpha=0.3 num_rounds=5 "strategy.proximal_mu=0.1"'
    )
    conf = exp.resolved()
    assert conf["partition"]["alpha"] == 0.3 and conf["num_rounds"] == 5
    assert conf["strategy"]["proximal_mu"] == 0.1
    assert parse_overrides("") == []
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_overrides('a="unclosed')


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        compose_experiment(["strategy=fedsgd"])
    assert "Available options in 'strategy'" in str(err.value)
    assert "fedavg" in str(err.value) and "fedprox" in str(err.value)


def test_unknown_key():
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'") as err:
        compose_experiment(["learning_rate=0.1"])
    assert "+learning_rate" not in str(err.value)  # never suggest appending the typo


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["num_round=2"], "unknown key 'num_round'; did you mean 'num_rounds'"),
        (["+num_round=2"], "unknown key 'num_round' in override '\\+num_round=2'.*'num_rounds'"),
        (["++num_round=2"], "unknown key 'num_round'"),
        (["partition=dirichlet", "+partition.alpah=0.3"], "did you mean 'partition.alpha'"),
        (["+partition.alpha=0.3"], "exists only with partition=dirichlet"),
        (["+strategy.proximal=0.1"], "did you mean 'strategy.proximal_mu'"),
        (["+aggregator.wieghted=true"], "WeightedMean takes no parameter 'wieghted'"),
    ],
)
def test_a_typo_is_refused_with_or_without_plus_and_the_closest_key_suggested(overrides, match):
    with pytest.raises(ConfigError, match=match):
        compose_experiment(overrides)


def test_plus_still_adds_groups_and_parameters_the_component_takes():
    assert compose_experiment(["+preset=robust"]).choices["aggregator"] == "geometric_median"
    assert compose_experiment(["++num_rounds=3"]).cfg.num_rounds == 3
    # a parameter the component's class takes, though its yaml does not list it
    base = OmegaConf.create({"aggregator": {"_target_": "fl_ext.aggregators.GeometricMedian"}})
    parsed = override_check.parse(["+aggregator.nu=1e-5", "+aggregator.mu=1"])
    assert override_check.check_additions(parsed[:1], base, CONF_DIR) is None
    assert "takes no parameter 'mu'" in override_check.check_additions(parsed, base, CONF_DIR)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("num_rounds=0", "num_rounds"),
        ("num_rounds=2.5", "num_rounds"),
        ("lr=0", "lr"),
        ("lr=-0.1", "lr"),
        ("fraction_train=0", "fraction_train"),
        ("fraction_train=1.01", "fraction_train"),
        ("fraction_evaluate=-0.5", "fraction_evaluate"),
        ("local_epochs=0", "local_epochs"),
        ("batch_size=0", "batch_size"),
        ("momentum=1", "momentum"),
        ("min_train_nodes=5", "min_available_nodes"),
        ("local_test_fraction=1", "local_test_fraction"),
        ("seed=-1", "seed"),
    ],
)
def test_invalid_values_fail_before_training(override, match):
    with pytest.raises(ConfigError, match=match):
        compose_experiment([override])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["partition=dirichlet", "partition.alpha=0"], "alpha"),
        (["partition=dirichlet", "partition.alpha=-1"], "alpha"),
        (["strategy.weight_cap_factor=0.5"], "weight_cap_factor"),
        (["dataset.test_fraction=1.0"], "test_fraction"),
        (["model.channels=[16,16,16,16,16]", "dataset=digits"], "too small"),
    ],
)
def test_invalid_components_fail_at_build(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment([*overrides, "tracking=none"]))


def test_more_partitions_than_samples_fails_before_training():
    built = build(compose_experiment(["dataset=digits", "tracking=none"]))
    with pytest.raises(ConfigError, match="more than the 1438 training samples"):
        check_partitions(built, 2000)
    built = build(compose_experiment(["dataset=digits", "partition=shards", "tracking=none"]))
    with pytest.raises(ConfigError, match="shards"):
        check_partitions(built, 800)
