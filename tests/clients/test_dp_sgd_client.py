"""DpSgdClient: history in context.state across rounds, restart from the server's ledger."""

import json

import pytest
from flwr.app import RecordDict

from clients import DpSgdClient
from fl_ext.data import Digits
from fl_ext.data.datasets import ArrayDataset
from fl_ext.models import MLP
from fl_ext.privacy import GaussianSteps, compute_epsilon
from fl_ext.privacy.dp_sgd import BudgetExhausted

DP = {
    "dp-mode": "dp_sgd",
    "dp-max-grad-norm": 1.0,
    "dp-delta": 1e-5,
    "dp-accountant": "rdp",
    "dp-target-epsilon": 0.0,
    "dp-noise-multiplier": 1.1,
    "dp-planned-rounds": 3,
    "dp-grad-sample-mode": "ghost",
    "batch-size": 50,
    "lr": 0.1,
    "seed": 1,
}


@pytest.fixture(scope="module")
def data():
    split = Digits().load()
    return ArrayDataset(split.train.x[:400], split.train.y[:400]), split.test


def _client(data, state, partition_id=3):
    train, test = data
    model = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(16,))
    return DpSgdClient(state=state, model=model, train=train, test=test, partition_id=partition_id)


def test_two_rounds_of_one_epoch_spend_one_round_of_two(data):
    state = RecordDict()
    params = _client(data, state).get_parameters({})
    for rnd in (1, 2):
        cfg = {**DP, "local-epochs": 1, "server-round": rnd}
        _, _, m1 = _client(data, state).fit(params, cfg)
    fresh = RecordDict()
    _, _, m2 = _client(data, fresh).fit(params, {**DP, "local-epochs": 2, "server-round": 1})
    assert m1["dp-epsilon"] == pytest.approx(m2["dp-epsilon"], rel=1e-12)
    assert m1["dp-steps"] == 8 and m2["dp-steps"] == 16 and m1["dp-client"] == 3
    want = compute_epsilon([GaussianSteps(1.1, 1 / 8, 16)], 1e-5, "rdp")
    assert m2["dp-epsilon"] == pytest.approx(want)


def test_restart_goes_on_from_the_server_ledger(data):
    spent = {"3": [[1.1, 0.125, 40]], "4": [[1.1, 0.125, 999]]}
    cfg = {**DP, "local-epochs": 1, "server-round": 1, "dp-spent": json.dumps(spent)}
    client = _client(data, RecordDict())
    _, _, metrics = client.fit(client.get_parameters({}), cfg)
    want = compute_epsilon([GaussianSteps(1.1, 0.125, 48)], 1e-5, "rdp")
    assert metrics["dp-epsilon"] == pytest.approx(want)


def test_declines_when_the_round_does_not_fit(data):
    spent = {"3": [[1.1, 0.125, 400]]}
    budget = compute_epsilon([GaussianSteps(1.1, 0.125, 404)], 1e-5, "rdp")
    cfg = {**DP, "local-epochs": 1, "dp-target-epsilon": budget, "dp-spent": json.dumps(spent)}
    client = _client(data, RecordDict())
    with pytest.raises(BudgetExhausted, match="would reach"):
        client.fit(client.get_parameters({}), cfg)
