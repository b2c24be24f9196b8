"""Server optimizers against Flower's own FedAvgM / FedAdagrad / FedAdam / FedYogi, same replies."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import strategy as flower

from fl_ext.params import ParamSpec
from fl_ext.server_opt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from flwr_records import named_array_record, record_to_named
from simulations.inprocess import InProcessGrid

START = OrderedDict(
    w=np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32),
    b=np.zeros(3, np.float32),
)
COUNTS = [10, 30, 60]

CASES = [
    (lambda: flower.FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
     lambda: FedAvgM(lr=0.7, momentum=0.9), 0),
    (lambda: flower.FedAdagrad(eta=0.1, tau=1e-3), lambda: FedAdagrad(eta=0.1, tau=1e-3), 0),
    (lambda: flower.FedYogi(eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3),
     lambda: FedYogi(eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3), 0),
    # Flower's FedAdam always bias-corrects, with t = round + 1: drive it one round behind
    (lambda: flower.FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
     lambda: FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, bias_correction=True), -1),
]  # fmt: skip


def _replies(messages, current, rng):
    out = []
    for msg, n in zip(messages, COUNTS, strict=True):
        arrays = OrderedDict(
            (k, (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32))
            for k, v in current.items()
        )
        content = RecordDict(
            {"arrays": named_array_record(arrays), "metrics": MetricRecord({"num-examples": n})}
        )
        out.append(Message(content, reply_to=msg))
    return out


@pytest.mark.parametrize(("theirs", "ours", "round_offset"), CASES)
def test_equals_flowers_strategy_on_the_same_replies(theirs, ours, round_offset):
    grid = InProcessGrid(ClientApp(), 3)
    flower_strategy, opt = theirs(), ours()
    spec = ParamSpec.of(START)
    params = spec.flatten(START)
    state = opt.init(params)
    current = START
    rng = np.random.default_rng(1)
    for server_round in (1, 2, 3, 4):
        messages = list(
            flower_strategy.configure_train(
                server_round, named_array_record(current), ConfigRecord(), grid
            )
        )
        replies = _replies(messages, current, rng)
        theirs_arrays, _ = flower_strategy.aggregate_train(server_round + round_offset, replies)
        # ours: the example-weighted mean of the same replies, then the optimizer's step
        w = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
        rows = torch.stack([spec.flatten(record_to_named(r.content["arrays"])) for r in replies])
        delta = (w[:, None] * rows.double()).sum(0).float() - params
        step, state = opt.update(delta, state)
        params = params + step
        got = record_to_named(theirs_arrays)
        for k, v in spec.unflatten(params).items():
            np.testing.assert_allclose(
                v, got[k], rtol=2e-5, atol=2e-6, err_msg=f"round {server_round}"
            )
        current = got


def test_inputs_untouched_and_bad_parameters_refused():
    opt = FedAdam()
    delta = torch.ones(5)
    state = opt.init(torch.zeros(5))
    before = {k: v.clone() for k, v in state.items()}
    opt.update(delta, state)
    assert all(torch.equal(before[k], state[k]) for k in state) and torch.equal(
        delta, torch.ones(5)
    )
    for bad in (
        lambda: FedAvgM(lr=0.0),
        lambda: FedAvgM(momentum=1.0),
        lambda: FedAdam(beta_2=1.5),
        lambda: FedYogi(tau=0.0),
        lambda: FedAdagrad(eta=-1.0),
    ):
        with pytest.raises(ValueError, match="server_opt"):
            bad()
    with pytest.raises(ValueError, match="shape"):
        opt.check_state(opt.init(torch.zeros(4)), 5)
