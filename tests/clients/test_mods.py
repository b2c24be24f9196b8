"""fl-ext's client mods in a user's own, quickstart-style Flower ClientApp.

The app below is what a Flower user writes (its own torch model, data and loop, replies with
``ArrayRecord(model.state_dict())``); the mods add what fl-ext's server needs. Every test runs
it against ``FlExtFedAvg`` on the in-process grid (real ClientApp, real Flower messages).
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients import numpy_client_app
from clients.codec_transport import RESIDUAL_KEY
from clients.mods import AttackMod, ClientInfoMod, CodecMod, poisoned_labels
from fl_ext import __version__
from fl_ext.codecs import BlockQuant, Cast, TopK
from fl_ext.compat import CLIENT_INFO, SCHEMA_KEY, VERSION_KEY, schema_hash
from fl_ext.params import get_weights, set_weights
from fl_ext.refusals import INCOMPATIBLE
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.byzantine import ByzantineSimulation
from strategies.compression import Compression

NODES, CLASSES, FEATURES = 4, 3, 4
CENTERS = 3.0 * np.eye(CLASSES, FEATURES, dtype=np.float32)
TRAIN_CONFIG = {"lr": 0.1, "batch-size": 16, "local-epochs": 1}


class Net(nn.Module):
    def __init__(self, hidden=None):
        super().__init__()
        self.fc = nn.Linear(FEATURES, hidden or CLASSES)
        self.extra = nn.Linear(hidden, CLASSES) if hidden else None

    def forward(self, x):
        x = self.fc(x)
        return self.extra(torch.relu(x)) if self.extra is not None else x


def data(pid):
    rng = np.random.default_rng(pid)
    y = rng.integers(CLASSES, size=40 + 8 * pid)
    x = CENTERS[y] + rng.normal(size=(len(y), FEATURES)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def local_train(model, x, y, config, pid):
    """The user's own loop: mini-batch SGD with cross-entropy, seeded per round and node."""
    torch.manual_seed(int(config.get("server-round", 0)) * 100 + pid)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=int(config["batch-size"]),
        shuffle=True,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
    total, steps = 0.0, 0
    for _ in range(int(config["local-epochs"])):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
    return total / steps


def user_app(mods, *, flip_helper=False, report_loss=True, labels_seen=None):
    """A quickstart-style ClientApp with ``mods``; it knows fl-ext only through the helpers."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        config = msg.content["config"]
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = data(pid)
        if flip_helper:
            y = poisoned_labels(msg, context, y, num_classes=CLASSES)
        if labels_seen is not None:
            labels_seen[pid] = y
        loss = local_train(model, x, y, config, pid)
        metrics = {"num-examples": len(x), **({"train_loss": loss} if report_loss else {})}
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        x, y = data(int(context.node_config["partition-id"]))
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        with torch.no_grad():
            logits = model(torch.from_numpy(x))
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        accuracy = float((logits.argmax(1).numpy() == y).mean())
        metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(x)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


class OwnClient(NumPyClient):
    """The same training served by fl-ext's own adapter (the reference client path)."""

    def __init__(self, pid):
        self.pid, self.model = pid, Net()

    def get_parameters(self, config):
        return list(get_weights(self.model).values())

    def fit(self, parameters, config):
        set_weights(self.model, parameters)
        x, y = data(self.pid)
        loss = local_train(self.model, x, y, config, self.pid)
        return self.get_parameters({}), len(x), {"train_loss": loss}

    def evaluate(self, parameters, config):
        set_weights(self.model, parameters)
        x, y = data(self.pid)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(x))
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        return loss, len(x), {"accuracy": float((logits.argmax(1).numpy() == y).mean())}


def own_app():
    return numpy_client_app(lambda ctx, cfg: OwnClient(int(ctx.node_config["partition-id"])))


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping the train reply each node sent (as the server got it)."""

    def __init__(self, app):
        super().__init__(app, NODES)
        self.replies: dict[int, list[Message]] = {}

    def _deliver(self, msg):
        reply = super()._deliver(msg)
        if msg.metadata.message_type == "train":
            self.replies.setdefault(msg.metadata.dst_node_id, []).append(reply)
        return reply


def initial_arrays():
    torch.manual_seed(0)
    return ArrayRecord(Net().state_dict())


def run(strategy, app, rounds=3):
    grid = RecordingGrid(app)
    result = strategy.start(
        grid, initial_arrays(), num_rounds=rounds, train_config=ConfigRecord(TRAIN_CONFIG)
    )
    return result, grid


def valid_per_round(result):
    return [int(m["clients_valid"]) for _, m in sorted(result.train_metrics_clientapp.items())]


def mods(template=None, *, attack=False):
    template = template if template is not None else Net()
    return [ClientInfoMod(template), CodecMod(template), *([AttackMod()] if attack else [])]


# ---------------------------------------------------------------------------------- codecs
CODECS = {
    "int8": lambda: Compression(uplink=BlockQuant(bits=8, block=8)),
    "topk_ef": lambda: Compression(uplink=TopK(fraction=0.2), error_feedback=True),
    "int8_float16_broadcast": lambda: Compression(
        uplink=BlockQuant(bits=8, block=8), downlink=Cast(dtype="float16")
    ),
}


@pytest.mark.parametrize("codec", list(CODECS))
def test_codec_mod_reply_is_fl_ext_clients_reply(codec):
    ours, grid = run(FlExtFedAvg(compression=CODECS[codec]()), user_app(mods()))
    theirs, _ = run(FlExtFedAvg(compression=CODECS[codec]()), own_app())
    assert valid_per_round(ours) == [NODES] * 3  # every payload accepted and decoded
    for name in ours.arrays:
        np.testing.assert_array_equal(ours.arrays[name].numpy(), theirs.arrays[name].numpy())
    assert ours.evaluate_metrics_clientapp  # evaluate replies (with client-info) accepted
    reply = grid.replies[grid.node_id(0)][-1]
    assert list(reply.content["arrays"].keys()) == ["payload"]
    assert reply.content[CLIENT_INFO][SCHEMA_KEY] == schema_hash(get_weights(Net()))
    if codec == "topk_ef":  # the residual lives in the node's state across rounds
        assert all(RESIDUAL_KEY in grid.contexts[n].state for n in grid.contexts)


def test_int8_codec_model_is_the_dense_model_within_the_quantization_error():
    coded, _ = run(FlExtFedAvg(compression=CODECS["int8"]()), user_app(mods()))
    dense, _ = run(FlExtFedAvg(), user_app([]))
    for name in coded.arrays:
        np.testing.assert_allclose(
            coded.arrays[name].numpy(), dense.arrays[name].numpy(), atol=2e-2
        )
    assert not np.array_equal(coded.arrays["fc.weight"].numpy(), dense.arrays["fc.weight"].numpy())


def test_without_codec_mod_the_dense_reply_is_refused_with_the_reason():
    _, grid = run(FlExtFedAvg(compression=CODECS["int8"]()), user_app([ClientInfoMod(Net())]), 1)
    reply = grid.replies[grid.node_id(0)][0]
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "add clients.mods.CodecMod" in reply.error.reason


def test_codec_down_without_template_is_an_error_naming_the_fix():
    app = user_app([ClientInfoMod(Net()), CodecMod()])
    _, grid = run(FlExtFedAvg(compression=CODECS["int8_float16_broadcast"]()), app, 1)
    reply = grid.replies[grid.node_id(0)][0]
    assert reply.has_error() and "CodecMod(template=model)" in reply.error.reason


# ----------------------------------------------------------------------------- client-info
def test_client_info_mod_refuses_a_model_of_another_schema():
    other = Net(hidden=5)  # the user's mods built with a different architecture
    strategy = FlExtFedAvg(require_client_info=True, fraction_evaluate=0.0)
    _, grid = run(strategy, user_app(mods(other)), 1)
    assert len(strategy.incompatible) == NODES
    assert all("model schema differs" in why for why in strategy.incompatible.values())
    reply = grid.replies[grid.node_id(0)][0]
    assert reply.has_error() and reply.error.code == INCOMPATIBLE


def test_client_info_mod_makes_a_plain_app_pass_require_client_info():
    strategy = FlExtFedAvg(require_client_info=True)
    result, grid = run(strategy, user_app([ClientInfoMod(Net())]))
    assert not strategy.incompatible and valid_per_round(result) == [NODES] * 3
    info = grid.replies[grid.node_id(1)][0].content[CLIENT_INFO]
    assert info[VERSION_KEY] == __version__


def ask(grid, config):
    """One train message with ``config`` to the grid's first node, as a server sends it."""
    content = RecordDict({"arrays": initial_arrays(), "config": ConfigRecord(config)})
    msg = grid.create_message(content, "train", grid.node_id(0), group_id="1")
    (reply,) = grid.send_and_receive([msg])
    return reply


def test_client_info_mod_refuses_a_server_of_another_fl_ext_version():
    grid = InProcessGrid(user_app([ClientInfoMod(Net())]), 1)
    reply = ask(grid, {**TRAIN_CONFIG, VERSION_KEY: "99.0.0"})
    assert reply.has_error() and reply.error.code == INCOMPATIBLE
    assert "99.0.0" in reply.error.reason


def test_client_info_mod_names_the_missing_train_loss():
    grid = InProcessGrid(user_app([ClientInfoMod(Net())], report_loss=False), 1)
    reply = ask(grid, TRAIN_CONFIG)
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "train_loss" in reply.error.reason
    app = user_app([ClientInfoMod(Net(), require_train_loss=False)], report_loss=False)
    assert CLIENT_INFO in ask(InProcessGrid(app, 1), TRAIN_CONFIG).content


# --------------------------------------------------------------------------------- attacks
@pytest.mark.parametrize("role", ["nan_update", "inf_update", "oversized", "wrong_shape"])
def test_attack_mod_transforms_the_designated_nodes_reply(role):
    byzantine = ByzantineSimulation(num_byzantine=1, client_role=role, seed=0)
    strategy = FlExtFedAvg(byzantine=byzantine, max_update_norm=100.0, fraction_evaluate=0.0)
    result, grid = run(strategy, user_app(mods(attack=True)), 1)
    (bad,) = byzantine.byzantine
    assert valid_per_round(result) == [NODES - 1]  # the server rejected the attacked reply
    sent = OrderedDict((k, a.numpy()) for k, a in grid.replies[bad][0].content["arrays"].items())
    w, b = sent["fc.weight"], sent["fc.bias"]
    if role == "nan_update":
        assert np.isnan(w.flat[0]) and np.isfinite(w.flat[1:]).all()
    elif role == "inf_update":
        assert np.isinf(b.flat[-1]) and np.isfinite(w).all()
    elif role == "oversized":
        assert np.abs(w).max() > 1e4
    else:
        assert w.shape == (CLASSES * FEATURES - 1,)
    for node, replies in grid.replies.items():
        if node != bad:
            assert not replies[0].has_error()
            assert np.isfinite(replies[0].content["arrays"]["fc.weight"].numpy()).all()


def test_label_flip_is_applied_by_the_helper_the_app_calls():
    byzantine = ByzantineSimulation(num_byzantine=1, client_role="label_flip", seed=0)
    seen = {}
    app = user_app(mods(attack=True), flip_helper=True, labels_seen=seen)
    result, grid = run(FlExtFedAvg(byzantine=byzantine, fraction_evaluate=0.0), app, 1)
    (bad,) = byzantine.byzantine
    assert valid_per_round(result) == [NODES]  # flipped-label updates look like any update
    for pid in range(NODES):
        _, y = data(pid)
        flipped = grid.node_id(pid) == bad
        np.testing.assert_array_equal(seen[pid], CLASSES - 1 - y if flipped else y)


def test_label_flip_without_the_helper_is_refused_clearly():
    byzantine = ByzantineSimulation(num_byzantine=1, client_role="label_flip", seed=0)
    result, grid = run(
        FlExtFedAvg(byzantine=byzantine, fraction_evaluate=0.0), user_app(mods(attack=True)), 1
    )
    (bad,) = byzantine.byzantine
    reply = grid.replies[bad][0]
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "poisoned_labels" in reply.error.reason
    assert valid_per_round(result) == [NODES - 1]
