"""Sample-level DP-SGD in a user's own ClientApp: DpSgdTraining in its loop, DpSgdMod around it.

Same quickstart-style app as tests/clients/test_mods.py, trained with Opacus through the
helper, against ``FlExtFedAvg(privacy=SampleLevelDP(...))``: the server's ledger must record
exactly the spend of the steps the clients took.
"""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.mods import ClientInfoMod, CodecMod, DpSgdMod, DpSgdTraining
from fl_ext.codecs import BlockQuant
from fl_ext.privacy import GaussianSteps, PrivacyLedger, compute_epsilon
from fl_ext.refusals import DECLINED, INCOMPATIBLE
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.compression import Compression
from strategies.privacy import SampleLevelDP
from tests.clients.test_mods import (
    NODES,
    TRAIN_CONFIG,
    Net,
    ask,
    data,
    run,
    valid_per_round,
)

SIGMA, CLIP, DELTA, ROUNDS = 1.0, 1.0, 1e-5, 2
DP_CONFIG = {  # what SampleLevelDP puts in a train message (clients/dp_sgd_client.py)
    "dp-mode": "dp_sgd",
    "dp-max-grad-norm": CLIP,
    "dp-delta": DELTA,
    "dp-accountant": "rdp",
    "dp-target-epsilon": 0.0,
    "dp-noise-multiplier": SIGMA,
    "dp-planned-rounds": ROUNDS,
    "dp-grad-sample-mode": "fused",
}


def dp_app(mods, *, use_helper=True):
    """The user's loop; in a DP-SGD round it trains with what DpSgdTraining returns."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        config = msg.content["config"]
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = data(pid)
        loader = DataLoader(
            TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
            batch_size=int(config["batch-size"]),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
        net = model
        dp = DpSgdTraining.for_message(msg, context) if use_helper else None
        if dp is not None:
            private = dp.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_generator=torch.Generator().manual_seed(pid),
            )
            net, optimizer, loader = private.module, private.optimizer, private.data_loader
        total, steps = 0.0, 0
        for _ in range(int(config["local-epochs"])):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(net(xb), yb)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
        if dp is not None:
            dp.finish()  # DpSgdMod puts the spend in the reply
        metrics = MetricRecord({"train_loss": total / steps, "num-examples": len(x)})
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content, reply_to=msg)

    return app


def sample_level_dp(tmp_path, **kwargs):
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", accountant="rdp", delta=DELTA)
    settings = {"noise_multiplier": SIGMA, **kwargs}
    return ledger, SampleLevelDP(
        ledger=ledger, max_grad_norm=CLIP, planned_rounds=ROUNDS, **settings
    )


def batches(pid):
    return math.ceil(len(data(pid)[1]) / TRAIN_CONFIG["batch-size"])


@pytest.mark.parametrize("codec", [False, True], ids=["dense", "int8"])
def test_dp_sgd_helper_spend_is_recorded_in_the_server_ledger(tmp_path, codec):
    ledger, dp = sample_level_dp(tmp_path)
    compression = Compression(uplink=BlockQuant(bits=8, block=8)) if codec else None
    strategy = FlExtFedAvg(privacy=dp, compression=compression, fraction_evaluate=0.0)
    mods = [ClientInfoMod(Net()), DpSgdMod(), CodecMod(Net())]
    result, grid = run(strategy, dp_app(mods), rounds=ROUNDS)
    assert valid_per_round(result) == [NODES] * ROUNDS and not strategy.incompatible
    assert sorted(ledger.sample_level) == [str(pid) for pid in range(NODES)]
    for pid in range(NODES):
        history = ledger.sample_level[str(pid)]
        q = 1 / batches(pid)
        assert sum(h.steps for h in history) == ROUNDS * batches(pid)
        assert all(h.noise_multiplier == SIGMA and h.sample_rate == q for h in history)
        want = compute_epsilon([GaussianSteps(SIGMA, q, ROUNDS * batches(pid))], DELTA, "rdp")
        assert ledger.sample_level_epsilon(str(pid)) == pytest.approx(want, rel=1e-9)
        metrics = grid.replies[grid.node_id(pid)][-1].content["metrics"]
        assert metrics["dp-client"] == pid
        assert metrics["dp-epsilon"] == pytest.approx(want, rel=1e-9)  # the client's claim


def test_a_dp_round_trained_without_the_helper_is_not_sent(tmp_path):
    ledger, dp = sample_level_dp(tmp_path)
    strategy = FlExtFedAvg(privacy=dp, fraction_evaluate=0.0)
    _, grid = run(strategy, dp_app([ClientInfoMod(Net()), DpSgdMod()], use_helper=False), 1)
    assert len(strategy.incompatible) == NODES  # the server stops asking these nodes
    reply = grid.replies[grid.node_id(0)][0]
    assert reply.has_error() and reply.error.code == INCOMPATIBLE
    assert "DpSgdTraining" in reply.error.reason
    assert not ledger.sample_level


def test_the_helper_declines_a_round_past_the_target_epsilon():
    steps = batches(0)
    spent = {"0": [[SIGMA, 1 / steps, 50 * steps]]}
    budget = compute_epsilon([GaussianSteps(SIGMA, 1 / steps, 50 * steps + 1)], DELTA, "rdp")
    config = {
        **TRAIN_CONFIG,
        **DP_CONFIG,
        "dp-target-epsilon": budget,
        "dp-spent": json.dumps(spent),
    }
    grid = InProcessGrid(dp_app([DpSgdMod()]), 1)
    reply = ask(grid, config)
    assert reply.has_error() and reply.error.code == DECLINED
    assert "would reach" in reply.error.reason
    assert "dp-sgd" not in grid.contexts[grid.node_id(0)].state  # nothing trained, recorded


def test_the_helper_keeps_the_history_in_context_state_across_rounds():
    config = {**TRAIN_CONFIG, **DP_CONFIG}
    grid = InProcessGrid(dp_app([DpSgdMod()]), 1)  # one node: its context.state persists
    first = ask(grid, config).content["metrics"]
    second = ask(grid, config).content["metrics"]
    steps = batches(0)
    assert first["dp-steps"] == second["dp-steps"] == steps
    want = compute_epsilon([GaussianSteps(SIGMA, 1 / steps, 2 * steps)], DELTA, "rdp")
    assert second["dp-epsilon"] == pytest.approx(want, rel=1e-9)
    assert np.isfinite(first["train_loss"])
