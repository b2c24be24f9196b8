"""Stages: driven by a ``Round`` and hand-built replies, then through the engine end to end."""

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fl_ext import __version__
from fl_ext.compat import EVALUATE_RECEIVED, SCHEMA_KEY, VERSION_KEY
from fl_ext.validation import Rejection, RejectReason
from flwr_records import named_array_record
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.replies import TrainReply
from strategies.round import Round
from strategies.stages import Compat, EvaluateWithTrain, FedProx, Stage

from .test_fedavg import GLOBAL, expected_mean, make_app, small_ids


def _round(number=3):
    return Round.start(number, OrderedDict((k, v.copy()) for k, v in GLOBAL.items()))


def _reply(node, loss):
    return TrainReply(
        node_id=node, arrays=OrderedDict(), num_examples=10, metrics={"train_loss": loss}
    )


def test_builtin_stage_entries():
    rnd = _round()
    assert Compat().entries(rnd) == {
        "server-round": 3,
        VERSION_KEY: __version__,
        SCHEMA_KEY: rnd.schema,
    }
    assert FedProx(proximal_mu=0.3).entries(rnd) == {"proximal-mu": 0.3}
    assert EvaluateWithTrain().entries(rnd) == {EVALUATE_RECEIVED: True}
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(proximal_mu=-1.0)


class Quarantine(Stage):
    """A toy stage: keeps one node out, rejects replies above a loss, counts, has state."""

    name = "quarantine"

    def __init__(self, banned, max_loss):
        self.banned, self.max_loss, self.refused = set(banned), max_loss, 0

    def eligible(self, rnd, nodes):
        return [n for n in nodes if n not in self.banned]

    def entries(self, rnd):
        return {"quarantine-round": rnd.number}

    def check(self, rnd, reply):
        if reply.metrics.get("train_loss", 0.0) > self.max_loss:
            self.refused += 1
            return Rejection(RejectReason.BAD_METRIC, f"loss above {self.max_loss}")
        return None

    def metrics(self, rnd):
        return {"quarantine_refused": float(self.refused)}

    def state_dict(self):
        return {"banned": sorted(self.banned), "refused": self.refused}

    def load_state_dict(self, state, *, first_round=1):
        self.banned, self.refused = set(state["banned"]), int(state["refused"])


def test_a_stage_unit_tested_on_a_round_and_hand_built_replies():
    stage, rnd = Quarantine({2}, max_loss=0.6), _round()
    assert stage.eligible(rnd, [1, 2, 3]) == [1, 3]
    assert stage.check(rnd, _reply(1, 1.0)).reason is RejectReason.BAD_METRIC
    assert stage.check(rnd, _reply(3, 0.2)) is None
    assert stage.metrics(rnd) == {"quarantine_refused": 1.0}


def test_a_stage_plugs_into_every_phase_of_the_engine_and_its_state_is_checkpointed():
    # node n reports train_loss 1/n: node 1 (loss 1.0) is refused, node 2 is kept out
    grid = InProcessGrid(make_app({}), 5, node_ids=small_ids(5))
    strategy = FlExtFedAvg(stages=[Quarantine({2}, max_loss=0.6)], max_update_norm=100.0)
    messages = list(strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 3, 4, 5]
    assert all(m.content["config"]["quarantine-round"] == 1 for m in messages)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert dict(strategy.round_log.rejected) == {"bad_metric": 1}
    got = {k: np.asarray(v.numpy()) for k, v in arrays.items()}
    for k, v in expected_mean([3, 4, 5]).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6)
    state, tensors = strategy.state_dict()
    assert state["quarantine"] == {"banned": [2], "refused": 1}
    quarantine = Quarantine(set(), max_loss=0.6)
    fresh = FlExtFedAvg(stages=[quarantine])
    fresh.load_state_dict(state, tensors, first_round=2)
    assert quarantine.banned == {2} and quarantine.refused == 1


def test_flowers_own_start_drives_the_engine_to_the_same_model_as_the_driver():
    from flwr.serverapp.strategy import Strategy

    from fl_ext.server_opt import FedAvgM

    def strategy():
        return FlExtFedAvg(
            stages=[Quarantine({2}, max_loss=0.6)],
            server_opt=FedAvgM(lr=1.0, momentum=0.5),
            fraction_evaluate=0.0,
        )

    def grid():
        return InProcessGrid(make_app({}), 5, node_ids=small_ids(5))

    ours, theirs = strategy(), strategy()
    mine = ours.start(grid(), named_array_record(GLOBAL), num_rounds=3)
    flowers = Strategy.start(theirs, grid(), named_array_record(GLOBAL), num_rounds=3)
    for key, value in mine.arrays.items():
        np.testing.assert_array_equal(flowers.arrays[key].numpy(), value.numpy())
    assert set(flowers.train_metrics_clientapp) == {1, 2, 3}
    assert flowers.train_metrics_clientapp[3]["quarantine_refused"] == 3.0  # stage metrics too
    assert flowers.train_metrics_clientapp[3]["clients_valid"] == 3
