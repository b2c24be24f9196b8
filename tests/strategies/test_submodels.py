"""Capacity-scaled sub-models through the real engine and ClientApp on the in-process grid."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fl_ext.params import ParamSpec, get_weights
from flwr_records import named_array_record
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run
from strategies.submodels import Capacity

BASE = [
    "dataset=digits", "model=mlp", "num_rounds=2", "fraction_evaluate=0", "tracking=none",
    "checkpoint.enabled=false", "local_epochs=1",
]  # fmt: skip


def run_experiment(overrides, num_nodes=6, node_config=None):
    built = build(compose_experiment([*BASE, *overrides]))
    config = None
    if node_config is not None:

        def config(pid):
            return {"partition-id": pid, "num-partitions": num_nodes, **node_config(pid)}

    result = run(InProcessGrid(client_app, num_nodes, node_config=config), built)
    return built, result


def last_log(built):
    """The last round's counters (selected, failed, rejected...)."""
    log = built.strategy.round_log
    return {"clients_failed": log.failed, "clients_rejected": sum(log.rejected.values())}


def final_flat(result):
    arrays = result.arrays.to_numpy_ndarrays()
    return np.concatenate([a.ravel() for a in arrays])


def test_width_one_for_everyone_is_fedavg_exactly():
    _, plain = run_experiment([])
    _, sub = run_experiment(["submodel=heterofl", "submodel.widths=[1.0]", "submodel.shares=[1]"])
    np.testing.assert_array_equal(final_flat(plain), final_flat(sub))


def test_heterofl_tiers_train_slices_and_every_width_is_evaluated():
    built, result = run_experiment(
        ["submodel=heterofl", "submodel.shares=[0.34,0.33,0.33]", "num_rounds=6",
         "local_epochs=2", "fraction_evaluate=1.0"]
    )  # fmt: skip
    metrics = result.train_metrics_clientapp[6]
    assert metrics["clients_width_0.25"] == 2 and metrics["clients_width_0.5"] == 2
    assert metrics["clients_width_1"] == 2 and last_log(built)["clients_rejected"] == 0
    assert metrics["coverage_groups"] == 3 and metrics["coverage_min_holders"] == 2
    assert metrics["coordinates_kept"] == 0
    # weak nodes evaluate the whole global model (federated evaluation): none refused
    assert built.strategy.round_log.eval_rejected == 0 and not built.strategy.incompatible
    central = result.evaluate_metrics_serverapp[6]
    for width in ("0.25", "0.5"):
        assert central[f"accuracy_w{width}"] > 0.3, central  # digits: 0.1 is chance
    assert central["accuracy"] > 0.8


def test_fedrolex_rolls_the_window_so_weak_clients_cover_other_channels():
    built, result = run_experiment(
        ["submodel=fedrolex", "submodel.widths=[0.5,1.0]", "submodel.shares=[1,0]"], num_nodes=3
    )
    plan, spec = (
        built.submodels.plan,
        ParamSpec.of(
            dict(zip(result.arrays.keys(), result.arrays.to_numpy_ndarrays(), strict=True))
        ),
    )
    first, second = plan.indices(0.5, offset=0), plan.indices(0.5, offset=1)
    assert not np.array_equal(first.flat_index(spec), second.flat_index(spec))
    metrics = result.train_metrics_clientapp[2]
    assert metrics["clients_width_0.5"] == 3 and last_log(built)["clients_rejected"] == 0
    # only weak clients: the hidden coordinates outside both windows kept their initial value
    assert metrics["coordinates_kept"] > 0


def test_fjord_clients_train_with_ordered_dropout():
    built, result = run_experiment(["submodel=fjord", "num_rounds=6", "local_epochs=2"])
    metrics = result.train_metrics_clientapp[6]
    assert last_log(built)["clients_rejected"] == 0 and metrics["clients_valid"] == 6
    assert result.evaluate_metrics_serverapp[6]["accuracy_w0.25"] > 0.3


def test_reported_capacity_is_used_from_the_next_round_and_a_device_refuses_more():
    widths = {0: 0.25, 1: 0.5, 2: 1.0, 3: 1.0}
    built, result = run_experiment(
        ["submodel=heterofl", "submodel.assign=reported", "num_rounds=2"],
        num_nodes=4,
        node_config=lambda pid: {"max-width": widths[pid]},
    )
    assert result.train_metrics_clientapp[1]["clients_width_0.25"] == 4  # nothing known yet
    second = result.train_metrics_clientapp[2]
    assert second["clients_width_0.25"] == 1 and second["clients_width_0.5"] == 1
    assert second["clients_width_1"] == 2 and last_log(built)["clients_failed"] == 0
    known = sorted(built.submodels.capacity.known.values())
    assert known == [0.25, 0.5, 1.0, 1.0]


def test_a_device_asked_for_more_than_its_max_width_fails_that_reply():
    built, result = run_experiment(
        ["submodel=heterofl", "submodel.shares=[0,0,1]", "num_rounds=1"],
        num_nodes=3,
        node_config=lambda pid: {"max-width": 0.5} if pid == 0 else {},
    )
    metrics = result.train_metrics_clientapp[1]
    assert last_log(built)["clients_failed"] == 1 and metrics["clients_valid"] == 2


def test_a_reply_with_the_full_model_from_a_sliced_node_is_rejected():
    built = build(compose_experiment([*BASE, "submodel=heterofl", "submodel.shares=[1,0,0]"]))
    strategy = built.strategy
    grid = InProcessGrid(client_app, 3)
    arrays = named_array_record(get_weights(built.model))
    messages = list(
        strategy.configure_train(1, arrays, ConfigRecord(dict(built.train_config)), grid)
    )
    assert {m.content["config"]["submodel-width"] for m in messages} == {0.25}
    sent = messages[0].content["arrays"].to_numpy_ndarrays()
    full = list(get_weights(built.model).values())
    assert sum(a.size for a in sent) < sum(a.size for a in full) / 5
    replies = [r for r in grid.send_and_receive(messages)]
    # a liar answers with the whole model
    forged = Message(
        RecordDict(
            {
                "arrays": arrays,
                "metrics": MetricRecord({"num-examples": 10, "train_loss": 1.0}),
                "client-info": replies[0].content["client-info"],
            }
        ),
        reply_to=messages[0],
    )
    _, accepted = strategy.accept_train(1, [forged, *replies[1:]])
    assert len(accepted) == 2 and strategy.round_log.rejected


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["secagg=secagg_plus"], "individual_updates"),
        (["privacy=client_level"], "coverage_aggregation"),
        (["privacy=dp_sgd"], "dp_sgd is not supported"),
        (["driver=fedbuff"], "node_views"),
        (["codec=int8", "codec.downlink=float16"], "downlink"),
        (["submodel.assign=network"], "simulated network"),
        (["submodel.widths=[0.5,0.25,1.0]"], "increasing"),
        (["submodel.shares=[1,1]"], "one per width"),
        (["submodel.policy=random"], "policy must be one of"),
    ],
)
def test_impossible_combinations_fail_at_start_with_the_reason(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment([*BASE, "submodel=heterofl", *overrides]))


def test_network_assignment_gives_slow_devices_narrow_models():
    cap = Capacity(widths=[0.25, 0.5, 1.0], assign="network", max_relative_time=2.0)
    cap.cost = {0.25: 0.07, 0.5: 0.27, 1.0: 1.0}

    class Net:
        def __init__(self, speeds):
            self.speeds = speeds

        def node(self, node):
            return type("P", (), {"speed": self.speeds[node]})()

    cap.network = Net({1: 1.2, 2: 3.0, 3: 8.0, 4: 40.0})
    assert [cap.width(n) for n in (1, 2, 3, 4)] == [1.0, 0.5, 0.25, 0.25]


def test_tier_shares_are_exact_on_the_first_nodes_and_survive_a_restart():
    cap = Capacity(widths=[0.25, 0.5, 1.0], shares=[0.35, 0.35, 0.3])
    cap.see(list(range(100, 120)))
    counts = [sum(1 for v in cap.known.values() if v == w) for w in (0.25, 0.5, 1.0)]
    assert counts == [7, 7, 6]
    again = Capacity(widths=[0.25, 0.5, 1.0], shares=[0.35, 0.35, 0.3])
    again.load_state_dict(cap.state_dict())
    assert again.known == cap.known


def test_a_robust_rule_and_an_uplink_codec_work_on_the_slices():
    built, result = run_experiment(
        ["submodel=heterofl", "aggregator=median", "aggregator.f=1", "codec=int8",
         "num_rounds=3", "local_epochs=2"]
    )  # fmt: skip
    metrics = result.train_metrics_clientapp[3]
    assert metrics["clients_valid"] == 6 and last_log(built)["clients_rejected"] == 0
    # the weak tier's int8 payload is its slice: far smaller than a full client's
    assert metrics["bytes_up_w0.25"] / metrics["clients_width_0.25"] < (
        metrics["bytes_up_w1"] / metrics["clients_width_1"] / 5
    )
    assert built.history[3] > built.history[0] + 0.3
