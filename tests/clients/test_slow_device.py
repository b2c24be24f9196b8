"""The slow-device mod: a node config delay on train replies, bad values refused."""

import time

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.mods.slow_device import slow_device_mod


def _train_message(kind="train"):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    return Message(RecordDict({"config": ConfigRecord({"lr": 0.1})}), dst_node_id=7,
                   message_type=kind)  # fmt: skip


def _context(node_config):
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _trained(msg, context):
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)


def test_a_train_reply_is_held_back_by_the_nodes_delay():
    started = time.monotonic()
    reply = slow_device_mod(_train_message(), _context({"train-delay-s": 0.3}), _trained)
    assert time.monotonic() - started >= 0.3  # a lower bound only: never an upper one
    assert not reply.has_error() and reply.content["metrics"]["num-examples"] == 3


def test_without_the_setting_or_for_other_messages_nothing_changes():
    assert not slow_device_mod(_train_message(), _context({}), _trained).has_error()
    reply = slow_device_mod(_train_message("evaluate"), _context({"train-delay-s": 1e5}), _trained)
    assert not reply.has_error()  # evaluate is never delayed (and a bad value not read)


@pytest.mark.parametrize("value", [-1.0, 1e9, "soon", float("nan"), True])
def test_a_bad_delay_is_an_error_reply_naming_the_value(value):
    reply = slow_device_mod(_train_message(), _context({"train-delay-s": value}), _trained)
    assert reply.has_error()
    assert "train-delay-s" in reply.error.reason and "[0, 3600]" in reply.error.reason
