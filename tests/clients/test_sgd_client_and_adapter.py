from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.supercore.task_identity import TaskIdentity

from clients import SgdClient, numpy_client_app
from fl_ext.data import Digits
from fl_ext.models import MLP
from fl_ext.params import get_weights
from fl_ext.training import evaluate

CONFIG = {
    "local-epochs": 2,
    "lr": 0.1,
    "momentum": 0.9,
    "batch-size": 32,
    "seed": 1,
    "server-round": 1,
}


@pytest.fixture(scope="module")
def digits():
    return Digits().load()


def _client(digits):
    return SgdClient(
        model=MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(32,)),
        train=digits.train,
        test=digits.test,
    )


def test_fit_improves_and_reports(digits):
    client = _client(digits)
    start = client.get_parameters({})
    loss0, n0, m0 = client.evaluate(start, {})
    params, n, metrics = client.fit(start, CONFIG)
    loss1, _, m1 = client.evaluate(params, {})
    assert n == len(digits.train) and n0 == len(digits.test)
    assert loss1 < loss0 and m1["accuracy"] > m0["accuracy"] + 0.5
    assert metrics["train_loss"] > 0 and metrics["compute_time_s"] > 0
    assert [p.shape for p in params] == [p.shape for p in start]


def test_proximal_mu_is_read_from_config(digits):
    start = _client(digits).get_parameters({})

    def drift(mu):
        params, _, _ = _client(digits).fit(start, {**CONFIG, "proximal-mu": mu})
        return sum(float(np.linalg.norm(a - b)) for a, b in zip(params, start, strict=True))

    assert drift(1.0) < drift(0.0)


def _message(arrays, config, message_type):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    content = RecordDict(
        {
            "arrays": ArrayRecord(OrderedDict((k, Array(v)) for k, v in arrays.items())),
            "config": ConfigRecord(config),
        }
    )
    msg = Message(content, dst_node_id=7, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def test_adapter_serves_a_numpy_client_to_a_message_app(digits):
    model = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(32,))
    arrays = get_weights(model)
    seen = {}

    def client_fn(context, config):
        seen["config"], seen["node"] = config, context.node_id
        return SgdClient(model=model, train=digits.train, test=digits.test)

    app = numpy_client_app(client_fn)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = app(_message(arrays, CONFIG, "train"), context)
    assert seen["config"]["lr"] == 0.1 and seen["node"] == 7
    assert reply.metadata.reply_to_message_id == "m1"
    record = reply.content["arrays"]
    assert list(record.keys()) == list(arrays)
    assert reply.content["metrics"]["num-examples"] == len(digits.train)
    new = OrderedDict((k, v.numpy()) for k, v in record.items())
    assert any(not np.array_equal(new[k], arrays[k]) for k in arrays)

    ev = app(_message(new, {}, "evaluate"), context)
    metrics = ev.content["metrics"]
    loss, acc = evaluate(model, digits.test)
    assert metrics["num-examples"] == len(digits.test)
    assert metrics["accuracy"] == pytest.approx(acc) and metrics["loss"] == pytest.approx(loss)


def test_adapter_refuses_a_client_returning_wrong_arrays(digits):
    class Broken(NumPyClient):
        def fit(self, parameters, config):
            return parameters[:1], 3, {}

    app = numpy_client_app(lambda ctx, cfg: Broken())
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    arrays = get_weights(MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(4,)))
    with pytest.raises(ValueError, match="fit returned 1 arrays"):
        app(_message(arrays, CONFIG, "train"), context)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"fl-ext-version": "9.1.0"},
            r"server runs fl-ext 9\.1\.0, this side 0\.1\.0 \(needs 0\.1\.x\)",
        ),
        ({"fl-ext-version": "0.2.0"}, r"needs 0\.1\.x"),
        ({"fl-ext-version": "next"}, "server version unreadable"),
        ({"schema-hash": "0" * 64}, "model schema differs"),
    ],
)
@pytest.mark.parametrize("message_type", ["train", "evaluate"])
def test_a_client_refuses_an_incompatible_server_with_the_reason(
    digits, extra, message, message_type
):
    from fl_ext.compat import INCOMPATIBLE

    app = numpy_client_app(lambda ctx, cfg: _client(digits))
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    arrays = get_weights(_client(digits).model)
    reply = app(_message(arrays, {**CONFIG, **extra}, message_type), context)
    assert reply.has_error() and reply.error.code == INCOMPATIBLE
    assert reply.error.reason.startswith("client refuses: ")
    assert __import__("re").search(message, reply.error.reason)


def test_every_reply_reports_the_client_version_and_model_schema(digits):
    from fl_ext import __version__
    from fl_ext.compat import schema_hash

    client = _client(digits)
    app = numpy_client_app(lambda ctx, cfg: client)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    arrays = get_weights(client.model)
    server = {"fl-ext-version": __version__, "schema-hash": schema_hash(arrays)}
    for message_type in ("train", "evaluate"):
        reply = app(_message(arrays, {**CONFIG, **server}, message_type), context)
        info = reply.content["client-info"]
        assert info["fl-ext-version"] == __version__ and info["schema-hash"] == schema_hash(arrays)
