"""The server charges DP-SGD spends to the client a node reports, and holds the node to it."""

from collections import OrderedDict

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_ext.privacy import PrivacyLedger
from strategies.privacy import SampleLevelDP
from strategies.replies import TrainReply


def _reply(node, client):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
    sent.metadata.__dict__["_message_id"] = f"m{node}-{client}"
    metrics = {
        "dp-client": client,
        "dp-noise-multiplier": 1.0,
        "dp-sample-rate": 0.1,
        "dp-steps": 10,
        "num-examples": 100,
    }
    reply = Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=sent)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply, TrainReply(node, OrderedDict(w=np.zeros(2, np.float32)), 100, dict(metrics))


def test_a_node_that_changes_its_claimed_client_is_refused_and_still_charged():
    dp = SampleLevelDP(
        ledger=PrivacyLedger(accountant="rdp", delta=1e-5),
        max_grad_norm=1.0,
        planned_rounds=3,
        noise_multiplier=1.0,
    )
    first = [_reply(7, 0), _reply(8, 1)]
    dp.record(1, [m for m, _ in first])
    assert all(dp.check(None, r) is None for _, r in first)
    liar_msg, liar = _reply(7, 5)  # node 7 now claims to be client 5
    dp.record(2, [liar_msg])
    rejection = dp.check(None, liar)
    assert rejection is not None and "reported DP client 0 before and 5 now" in rejection.detail
    assert set(dp.ledger.sample_level) == {"0", "1", "5"}  # the spend is charged, not lost
    assert dp.node_keys[7] == "0"  # the first identity stands
    honest_msg, honest = _reply(7, 0)
    dp.record(3, [honest_msg])
    assert dp.check(None, honest) is None


def test_a_spend_past_the_budget_is_recorded_never_raised_and_its_update_not_used():
    """The client already spent it: the ledger records it; the reply is refused as over_budget."""
    from fl_ext.validation import RejectReason

    dp = SampleLevelDP(
        ledger=PrivacyLedger(accountant="rdp", delta=1e-5, client_target_epsilon=1.0),
        max_grad_norm=1.0,
        planned_rounds=3,
        noise_multiplier=1.0,
        target_epsilon=1.0,
    )
    msg, reply = _reply(7, 0)  # sigma 1, q 0.1, 10 steps: epsilon well above 1
    dp.record(1, [msg])  # no BudgetExceeded out of aggregation
    assert dp.ledger.sample_level_epsilon("0") > 1.0  # the spend is in the ledger
    rejection = dp.check(None, reply)
    assert rejection is not None and rejection.reason is RejectReason.OVER_BUDGET
    assert 7 in dp.exhausted
