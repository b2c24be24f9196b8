"""The strategy against honest and hostile clients, on the in-process grid (real Messages)."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_ext.compat import CLIENT_INFO, SCHEMA_KEY, VERSION_KEY
from flwr_records import named_array_record, record_to_named
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.wire import record_wire_bytes

GLOBAL = OrderedDict(w=np.zeros((3, 4), np.float32), b=np.zeros(4, np.float32))


def small_ids(n):
    """Node ids 1..n: these tests compute expected values from the node id."""
    return range(1, n + 1)


def honest_delta(node_id):
    return OrderedDict((k, np.full_like(v, float(node_id))) for k, v in GLOBAL.items())


def info(msg, kind):
    """The client-info a well-behaved client echoes; the version/schema kinds lie."""
    config = msg.content["config"]
    version = {"old_version": "0.0.9", "garbled_version": "latest"}.get(kind, config[VERSION_KEY])
    schema = "f" * 64 if kind == "wrong_schema" else config[SCHEMA_KEY]
    return ConfigRecord({VERSION_KEY: version, SCHEMA_KEY: schema})


def make_app(behaviour):
    """Node ``n`` replies global + n (honest) with n*10 examples, unless ``behaviour`` says."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node = context.node_id
        arrays = record_to_named(msg.content["arrays"])
        new = OrderedDict((k, v + honest_delta(node)[k]) for k, v in arrays.items())
        metrics = {"num-examples": 10 * node, "train_loss": 1.0 / node}
        kind = behaviour.get(node)
        if kind == "raise":
            raise RuntimeError("client crashed")
        if kind == "nan":
            new["w"][0, 0] = np.nan
        if kind == "inf":
            new["b"][1] = np.inf
        if kind == "shape":
            new["w"] = np.zeros((4, 3), np.float32)
        if kind == "dtype":
            new["b"] = new["b"].astype(np.float64)
        if kind == "missing_key":
            del new["b"]
        if kind == "huge_norm":
            new["w"] = new["w"] + 1e6
        if kind == "astronomic":  # finite float32, but its square overflows float32
            new["w"] = np.full_like(new["w"], 1e30)
        if kind == "liar":
            metrics["num-examples"] = 10**9
        if kind == "negative":
            metrics["num-examples"] = -5
        if kind == "no_count":
            del metrics["num-examples"]
        if kind == "nan_loss":
            metrics["train_loss"] = float("nan")
        if kind == "bad_received_eval":
            metrics.update({"eval-loss": 0.1, "eval-accuracy": 7.0, "eval-num-examples": 5})
        content = RecordDict({"arrays": named_array_record(new), "metrics": MetricRecord(metrics)})
        if kind != "no_info":
            content[CLIENT_INFO] = info(msg, kind)
        if kind == "two_arrayrecords":
            content["extra"] = named_array_record(new)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        node = context.node_id
        metrics = {"num-examples": 10 * node, "loss": 0.1 * node, "accuracy": 0.5}
        if behaviour.get(node) == "bad_eval":
            metrics["accuracy"] = 7.0
        content = RecordDict({"metrics": MetricRecord(metrics), CLIENT_INFO: info(msg, None)})
        return Message(content, reply_to=msg)

    return app


def run_round(behaviour, num_nodes=6, **kwargs):
    grid = InProcessGrid(make_app(behaviour), num_nodes, node_ids=small_ids(num_nodes))
    kwargs = {"require_client_info": True, **kwargs}  # fl-ext clients: client-info required
    strategy = FlExtFedAvg(
        max_examples_per_client=1000, max_update_norm=100.0, weight_cap_factor=10.0, **kwargs
    )
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(1, named_array_record(GLOBAL), config, grid))
    assert dict(config) == {"lr": 0.1}  # the caller's config is not modified
    replies = grid.send_and_receive(messages)
    arrays, metrics = strategy.aggregate_train(1, replies)
    return strategy, messages, arrays, metrics


def expected_mean(nodes):
    counts = np.array([10.0 * n for n in nodes])
    capped = np.minimum(counts, 10 * np.sort(counts)[(len(counts) - 1) // 2])
    w = capped / capped.sum()
    return OrderedDict(
        (k, sum(wi * (GLOBAL[k].astype(np.float64) + n) for wi, n in zip(w, nodes, strict=True)))
        for k in GLOBAL
    )


def test_honest_round_is_the_weighted_mean():
    strategy, messages, arrays, metrics = run_round({})
    assert len(messages) == 6
    got = record_to_named(arrays)
    for k, v in expected_mean(range(1, 7)).items():
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], v, rtol=1e-6)
    rlog = strategy.round_log
    assert rlog.replied == 6 and sum(rlog.rejected.values()) == 0 and rlog.skipped is None
    assert rlog.bytes_down == 6 * record_wire_bytes(messages[0].content)
    assert rlog.bytes_up > 6 * GLOBAL["w"].nbytes
    assert metrics["train_loss"] == pytest.approx(np.mean([1 / n for n in range(1, 7)]))


HOSTILE = [
    "nan",
    "inf",
    "shape",
    "dtype",
    "missing_key",
    "huge_norm",
    "liar",
    "negative",
    "no_count",
    "nan_loss",
    "two_arrayrecords",
    "no_info",
    "old_version",
    "garbled_version",
    "wrong_schema",
    "bad_received_eval",
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_reply_is_rejected_and_the_round_goes_on(kind):
    strategy, _, arrays, _ = run_round({3: kind})
    assert sum(strategy.round_log.rejected.values()) == 1
    got = record_to_named(arrays)
    for k, v in expected_mean([1, 2, 4, 5, 6]).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6)


def test_all_hostile_kinds_at_once_and_a_crash():
    behaviour = dict(enumerate(HOSTILE, start=1))
    behaviour[len(HOSTILE) + 1] = "raise"
    strategy, _, arrays, _ = run_round(behaviour, num_nodes=len(HOSTILE) + 3)
    rlog = strategy.round_log
    assert sum(rlog.rejected.values()) == len(HOSTILE) and rlog.failed == 1
    assert set(rlog.rejected) >= {"non_finite", "shape_mismatch", "dtype_mismatch", "keys_mismatch"}
    assert set(rlog.rejected) >= {"norm_too_large", "bad_example_count", "bad_metric", "malformed"}
    assert rlog.rejected["incompatible"] == 4
    assert set(strategy.incompatible) == {12, 13, 14, 15}
    assert rlog.rejected["bad_metric"] == 2  # NaN loss, reported accuracy 7
    honest = [len(HOSTILE) + 2, len(HOSTILE) + 3]
    got = record_to_named(arrays)
    for k, v in expected_mean(honest).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6)


def test_too_few_valid_replies_skip_the_round():
    strategy, _, arrays, metrics = run_round(
        {1: "nan", 2: "nan", 3: "raise"}, num_nodes=4, min_train_nodes=2
    )
    assert arrays is None
    assert "1 valid replies" in strategy.round_log.skipped
    assert metrics["clients_valid"] == 1


def test_start_loop_tracks_every_round_and_skips_without_changing_the_model():
    grid = InProcessGrid(make_app({1: "nan", 2: "nan"}), 3, node_ids=small_ids(3))
    strategy = FlExtFedAvg(
        min_train_nodes=2, min_available_nodes=2, fraction_evaluate=1.0, max_update_norm=None
    )
    seen = {}
    result = strategy.start(
        grid,
        named_array_record(GLOBAL),
        num_rounds=2,
        evaluate_fn=lambda rnd, arrays: MetricRecord({"accuracy": 0.1 * rnd, "loss": 1.0}),
        on_round_end=seen.__setitem__,
    )
    assert sorted(seen) == [0, 1, 2]
    assert seen[1]["round_skipped"] == 1.0 and seen[1]["clients_rejected"] == 2
    assert seen[2]["test_accuracy"] == pytest.approx(0.2)
    assert seen[2]["bytes_down_cum"] == seen[1]["bytes_down"] + seen[2]["bytes_down"]
    assert seen[1]["fed_eval_accuracy"] == pytest.approx(0.5)
    assert seen[1]["round_time_s"] >= seen[1]["train_time_s"] > 0
    np.testing.assert_array_equal(record_to_named(result.arrays)["w"], GLOBAL["w"])


def test_bad_evaluate_reply_is_rejected():
    grid = InProcessGrid(make_app({2: "bad_eval"}), 3, node_ids=small_ids(3))
    strategy = FlExtFedAvg(fraction_evaluate=1.0)
    strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid)
    msgs = strategy.configure_evaluate(1, named_array_record(GLOBAL), ConfigRecord(), grid)
    metrics = strategy.aggregate_evaluate(1, grid.send_and_receive(msgs))
    assert strategy.round_log.eval_rejected == 1
    # node 3's 30 examples capped at 2 x the lower median (10)
    assert metrics["loss"] == pytest.approx((10 * 0.1 + 20 * 0.3) / 30)


def test_federated_evaluation_off():
    grid = InProcessGrid(make_app({}), 3, node_ids=small_ids(3))
    strategy = FlExtFedAvg(fraction_evaluate=0.0)
    strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid)
    msgs = strategy.configure_evaluate(1, named_array_record(GLOBAL), ConfigRecord(), grid)
    assert list(msgs) == []
    assert strategy.aggregate_evaluate(1, []) is None


def test_selection_is_seeded():
    def picks(seed):
        grid = InProcessGrid(make_app({}), 20, node_ids=small_ids(20))
        strategy = FlExtFedAvg(fraction_train=0.25, seed=seed)
        return [
            sorted(
                m.metadata.dst_node_id
                for m in strategy.configure_train(
                    r, named_array_record(GLOBAL), ConfigRecord(), grid
                )
            )
            for r in range(3)
        ]

    assert picks(1) == picks(1) != picks(2)
    assert all(len(p) == 5 for p in picks(1))


def test_fedprox_sends_mu_and_fedavg_does_not():
    grid = InProcessGrid(make_app({}), 2, node_ids=small_ids(2))
    prox = list(
        FlExtFedAvg(proximal_mu=0.3).configure_train(
            1, named_array_record(GLOBAL), ConfigRecord(), grid
        )
    )
    avg = list(FlExtFedAvg().configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid))
    assert prox[0].content["config"]["proximal-mu"] == 0.3
    assert "proximal-mu" not in avg[0].content["config"]
    assert avg[0].content["config"]["server-round"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraction_train": 0.0},
        {"fraction_train": 1.5},
        {"fraction_evaluate": -0.1},
        {"min_train_nodes": 0},
        {"min_train_nodes": 3, "min_available_nodes": 2},
        {"max_examples_per_client": 0},
        {"weight_cap_factor": 0.5},
        {"max_update_norm": 0.0},
        {"proximal_mu": -1.0},
    ],
)
def test_bad_parameters_fail_at_construction(kwargs):
    with pytest.raises(ValueError):
        FlExtFedAvg(**kwargs)


def test_robust_rule_ignores_a_huge_update_that_the_mean_would_follow():
    from fl_ext.aggregators import CoordinateMedian

    grid = InProcessGrid(make_app({1: "huge_norm"}), 5, node_ids=small_ids(5))
    strategy = FlExtFedAvg(aggregation=CoordinateMedian(f=1), max_update_norm=None)
    messages = list(strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid))
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    got = record_to_named(arrays)
    # node n adds n; node 1 adds 1e6 more to w: medians are 4 for w (2,3,4,5,1e6+1), 3 for b
    np.testing.assert_allclose(got["w"], GLOBAL["w"] + 4.0)
    np.testing.assert_allclose(got["b"], GLOBAL["b"] + 3.0)
    assert sum(strategy.round_log.rejected.values()) == 0


def test_round_skipped_when_the_rule_needs_more_valid_updates():
    from fl_ext.aggregators import Krum

    strategy, _, arrays, _ = run_round({1: "nan", 2: "nan"}, num_nodes=6, aggregation=Krum(f=1))
    assert arrays is None
    assert "Krum(f=1) needs 5" in strategy.round_log.skipped


def test_centered_clipping_center_is_the_previous_aggregate():
    from fl_ext.aggregators import CenteredClipping

    grid = InProcessGrid(make_app({}), 3, node_ids=small_ids(3))
    strategy = FlExtFedAvg(aggregation=CenteredClipping(tau=100.0, iterations=1))
    for rnd in (1, 2):
        messages = strategy.configure_train(rnd, named_array_record(GLOBAL), ConfigRecord(), grid)
        strategy.aggregate_train(rnd, grid.send_and_receive(messages))
    # tau large: one iteration from center c gives the plain mean of the deltas (2.0)
    assert torch.allclose(strategy.aggregation.state.center, torch.full((16,), 2.0))
    assert strategy.aggregation.state.round == 2


def test_an_incompatible_node_is_not_selected_again():
    grid = InProcessGrid(make_app({3: "old_version"}), 6, node_ids=small_ids(6))
    strategy = FlExtFedAvg(max_update_norm=100.0)
    messages = list(strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid))
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert "0.0.9" in strategy.incompatible[3]
    again = strategy.configure_train(2, arrays, ConfigRecord(), grid)
    assert sorted(m.metadata.dst_node_id for m in again) == [1, 2, 4, 5, 6]
    evaluated = strategy.configure_evaluate(2, arrays, ConfigRecord(), grid)
    assert 3 not in {m.metadata.dst_node_id for m in evaluated}


def test_an_astronomic_but_finite_update_is_too_large_not_non_finite():
    strategy, _, _, metrics = run_round({2: "astronomic"})
    assert dict(strategy.round_log.rejected) == {"norm_too_large": 1}
    assert metrics["clients_valid"] == 5


def test_with_the_defaults_a_liar_gets_at_most_twice_a_typical_share():
    """No max_examples_per_client and the default cap: node 3 claims 1e9 examples."""
    grid = InProcessGrid(make_app({3: "liar"}), 6, node_ids=small_ids(6))
    strategy = FlExtFedAvg(max_update_norm=100.0)
    messages = list(strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid))
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    counts = np.array([10.0, 20.0, 80.0, 40.0, 50.0, 60.0])  # 1e9 capped at 2 x lower median 40
    w = counts / counts.sum()
    got = record_to_named(arrays)
    np.testing.assert_allclose(got["b"], GLOBAL["b"] + np.dot(w, np.arange(1, 7)), rtol=1e-6)
    assert w[2] <= 2 * 40 / counts.sum()  # twice the median client's share, not ~70 %


def test_default_experiment_bounds_a_client_claiming_the_training_set():
    from simulations.config import compose_experiment

    cap = compose_experiment([]).cfg.strategy.weight_cap_factor
    counts = np.array([400.0] * 9 + [4000.0])  # 10 IID clients; one claims all 4,000 images
    from fl_ext.aggregators import capped_example_weights

    w = capped_example_weights(counts, cap)
    assert w[-1] / w.sum() <= 2 / 11 + 1e-12  # was 10/19 = 53 % with a factor of 10
