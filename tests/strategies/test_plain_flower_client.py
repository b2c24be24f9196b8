"""fl-ext strategies as drop-in Flower strategies, with a plain Flower ClientApp.

The ClientApp below is what a Flower user writes (quickstart style): it knows nothing of
fl-ext, returns one ArrayRecord and ``num-examples`` (no ``client-info``). Every capability
that needs no fl-ext client must train with it.
"""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_ext.aggregators import CoordinateMedian, GeometricMedian
from fl_ext.selection import OortSelector
from fl_ext.server_opt import FedAdam, FedAvgM
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg

W_TRUE = np.array([2.0, -1.0, 0.5], dtype=np.float32)
NODES = 6


def _data(partition_id):
    rng = np.random.default_rng(partition_id)
    x = rng.normal(size=(40 + 10 * partition_id, 3)).astype(np.float32)
    return x, x @ W_TRUE + rng.normal(scale=0.01, size=len(x)).astype(np.float32)


def plain_app(broken=None):
    """Linear regression by gradient descent; ``broken`` partitions reply NaN weights."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        w = msg.content["arrays"]["w"].numpy().copy()
        lr = float(msg.content["config"].get("lr", 0.1))
        x, y = _data(pid)
        for _ in range(5):
            w -= lr * 2 * x.T @ (x @ w - y) / len(x)
        if broken is not None and pid == broken:
            w[:] = np.nan
        loss = float(np.mean((x @ w - y) ** 2))
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(w)}),
                "metrics": MetricRecord({"train_loss": loss, "num-examples": len(x)}),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        x, y = _data(int(context.node_config["partition-id"]))
        w = msg.content["arrays"]["w"].numpy()
        loss = float(np.mean((x @ w - y) ** 2))
        metrics = MetricRecord({"loss": loss, "accuracy": 0.0, "num-examples": len(x)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _train(strategy, app=None, rounds=4):
    grid = InProcessGrid(app or plain_app(), NODES)
    result = strategy.start(
        grid,
        ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
        num_rounds=rounds,
        train_config=ConfigRecord({"lr": 0.1}),
    )
    w = result.arrays["w"].numpy()
    return float(np.linalg.norm(w - W_TRUE)), strategy, result


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"aggregation": CoordinateMedian(f=1)},
        {"aggregation": GeometricMedian(f=1)},
        {"server_opt": FedAvgM(lr=1.0, momentum=0.5)},
        {"server_opt": FedAdam(eta=0.3)},
        {"selector": OortSelector(fraction=0.5, minimum=2, seed=0), "fraction_train": 0.5},
    ],
    ids=["fedavg", "median", "geomedian", "fedavgm", "fedadam", "oort"],
)
def test_a_plain_flower_clientapp_trains_with_every_server_side_capability(kwargs):
    error, strategy, result = _train(FlExtFedAvg(**kwargs))
    assert error < 0.5 * np.linalg.norm(W_TRUE), error  # from 2.3 at w = 0
    assert not strategy.incompatible and sum(strategy.round_log.rejected.values()) == 0
    assert result.evaluate_metrics_clientapp  # federated evaluation ran on the plain client


def test_a_hostile_plain_client_is_still_rejected_and_the_rest_trains():
    error, strategy, _ = _train(FlExtFedAvg(), app=plain_app(broken=2))
    assert sum(strategy.round_log.rejected.values()) == 1  # NaN weights (and loss)
    assert error < 0.5 * np.linalg.norm(W_TRUE)


def test_client_level_dp_with_a_plain_client(tmp_path):
    from fl_ext.privacy import PrivacyLedger
    from strategies.privacy import ClientLevelDP

    ledger = PrivacyLedger.open(tmp_path / "ledger.json", accountant="rdp", delta=1e-5)
    dp = ClientLevelDP(
        ledger=ledger, sample_rate=1.0, noise_multiplier=0.01, clip=10.0, noise_seed=0
    )
    error, _, _ = _train(FlExtFedAvg(privacy=dp))
    assert error < 0.5 * np.linalg.norm(W_TRUE)
    assert ledger.client_level_epsilon() > 0


def test_require_client_info_refuses_plain_clients():
    _, strategy, _ = _train(FlExtFedAvg(require_client_info=True), rounds=1)
    assert len(strategy.incompatible) == NODES


def test_drop_in_for_flowers_fedavg_gives_flowers_model():
    from flwr.serverapp.strategy import FedAvg

    start = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    theirs = FedAvg(fraction_evaluate=0.0).start(
        InProcessGrid(plain_app(), NODES),
        start,
        num_rounds=3,
        train_config=ConfigRecord({"lr": 0.1}),
    )
    ours = FlExtFedAvg(fraction_evaluate=0.0, weight_cap_factor=None).start(
        InProcessGrid(plain_app(), NODES),
        start,
        num_rounds=3,
        train_config=ConfigRecord({"lr": 0.1}),
    )
    np.testing.assert_allclose(ours.arrays["w"].numpy(), theirs.arrays["w"].numpy(), rtol=1e-5)
