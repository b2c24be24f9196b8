"""The push/pull loop against a grid whose replies arrive late and out of order."""

import time

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies.exchange import exchange


class SlowGrid:
    """Replies to message i after ``delays[i]`` seconds; message ids are pushed in order."""

    def __init__(self, delays, refuse=(), refused_as="none"):
        self.delays, self.refuse, self.pulls = delays, set(refuse), 0
        self.refused_as = refused_as  # "none": HttpGrid's None in place; "omit": in-memory grid

    def push_messages(self, messages):
        self.start = time.monotonic()
        self.messages = {}
        ids = []
        for i, msg in enumerate(messages):
            if i in self.refuse:
                if self.refused_as == "none":
                    ids.append(None)
                continue
            mid = f"m{i}"
            msg.metadata.__dict__["_message_id"] = mid
            self.messages[mid] = (i, msg)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.monotonic() - self.start
        out = []
        for mid in ids:
            i, msg = self.messages[mid]
            if now >= self.delays[i]:
                reply = Message(RecordDict({"c": ConfigRecord({"i": i})}), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = i + 1
                out.append(reply)
        return out


def _messages(n):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    return [Message(RecordDict(), dst_node_id=i + 1, message_type="train") for i in range(n)]


def test_replies_keep_push_order_and_record_when_they_arrived():
    grid = SlowGrid([0.3, 0.0, 0.15])
    got = exchange(grid, _messages(3), timeout=5)
    assert [r.content["c"]["i"] for r in got.replies] == [0, 1, 2]
    by_node = got.by_node()
    assert by_node[2] < by_node[3] <= by_node[1] and 0.15 <= by_node[3] and 0.3 <= by_node[1]
    assert grid.pulls < 40  # polls back off while nothing arrives
    metrics = got.metrics("train_")
    assert metrics["train_reply_s_max"] == by_node[1]


@pytest.mark.parametrize("refused_as", ["none", "omit"])
def test_timeout_returns_what_arrived_and_refused_pushes_are_counted(refused_as):
    grid = SlowGrid([0.0, 30.0, 0.0], refuse={2}, refused_as=refused_as)
    got = exchange(grid, _messages(3), timeout=0.3)
    assert [r.content["c"]["i"] for r in got.replies] == [0] and got.not_pushed == 1
    assert got.left_in_flight == 1  # message 1 pushed, never answered
    assert exchange(grid, [], timeout=1).replies == []


@pytest.mark.parametrize("refused_as", ["none", "omit"])
def test_a_refused_first_message_does_not_shift_the_others(refused_as):
    """Flower's in-memory grid returns a shorter list: replies must still match their nodes."""
    grid = SlowGrid([0.0, 0.0, 0.0, 0.0], refuse={0}, refused_as=refused_as)
    got = exchange(grid, _messages(4), timeout=5)
    assert sorted(got.by_node()) == [2, 3, 4] and got.not_pushed == 1
    assert [r.content["c"]["i"] for r in got.replies] == [1, 2, 3]
