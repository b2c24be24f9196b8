"""Codecs end to end on the in-process grid: accuracy, bytes on the wire, bad payloads."""

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from mlflow.tracking import MlflowClient

from fl_ext.tracking import resolve_tracking_uri
from flwr_records import payload_record, record_payload
from simulations.build import build
from simulations.client_app import app as real_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = ["dataset=digits", "model=mlp", "num_rounds=6", "fraction_evaluate=0.0"]


def _run(overrides, app=real_app, nodes=5):
    built = build(compose_experiment([*BASE, *overrides]))
    run(InProcessGrid(app, nodes), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    return built, found.data.metrics


def test_chain_codec_with_error_feedback_learns_with_far_fewer_bytes():
    ref, m_ref = _run(["codec=none"])
    got, m_got = _run(["codec=topk_int8"])
    assert got.history[6] > ref.history[6] - 0.08  # 1% of the update per round, error feedback
    assert m_ref["bytes/up_cum"] / m_got["bytes/up_cum"] > 50
    assert m_got["bytes/down_cum"] == pytest.approx(m_ref["bytes/down_cum"], rel=0.01)


def test_float16_broadcast_halves_the_downlink():
    _, m_ref = _run(["codec=int8"])
    got, m_got = _run(["codec=int8", "codec.downlink=float16"])
    assert m_got["bytes/down_cum"] < 0.55 * m_ref["bytes/down_cum"]
    assert got.history[6] > 0.8


TAMPERING = [  # (payload field, corruption): each makes the payload unusable
    ("values.scales", lambda a: np.full_like(a, np.nan)),
    ("values.q", lambda a: a.astype(np.int16)),
    ("index_meta", lambda a: np.array([a[0], 60], np.int64)),
    ("values.q", lambda a: a[:-1]),
]


def _tampering_app():
    """The real ClientApp, but the first len(TAMPERING) nodes to train each corrupt one field."""
    app = ClientApp()
    order: list[int] = []

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = real_app(msg, context)
        if context.node_id not in order:
            order.append(context.node_id)
        index = order.index(context.node_id)
        if index < len(TAMPERING):
            field, corrupt = TAMPERING[index]
            payload = record_payload(reply.content["arrays"])
            payload[field] = corrupt(payload[field])
            reply.content["arrays"] = payload_record(payload)
        return reply

    return app


def test_every_kind_of_bad_payload_is_rejected_and_the_round_goes_on():
    nodes = len(TAMPERING) + 4
    built, metrics = _run(["codec=topk_int8", "num_rounds=2"], app=_tampering_app(), nodes=nodes)
    assert metrics["clients/rejected"] == len(TAMPERING) and metrics["clients/valid"] == 4
    assert metrics["clients/rejected_malformed"] == len(TAMPERING)
    assert built.history[2] > built.history[0]


def test_unknown_downlink_is_a_config_error():
    with pytest.raises(ConfigError, match=r"codec\.downlink 'int3' is not one of"):
        build(compose_experiment([*BASE, "codec=int8", "codec.downlink=int3", "tracking=none"]))


def test_adaptive_codec_compresses_slow_links_harder():
    built, metrics = _run(["codec=adaptive"], nodes=8)
    comp = built.strategy.compression
    tiers = {n: comp.tier(n) for n in comp._bandwidth}
    assert len({id(t) for t in tiers.values()}) >= 2  # the seeded draw spreads the nodes
    for node, tier in tiers.items():
        assert tier is comp.tiers[[0.5, 2.0, 10.0, 100.0].index(comp.bandwidth(node))]
    assert sum(metrics[f"clients/tier{i}"] for i in range(4)) == 8
    assert metrics["time/sim_upload_s_max"] > 0 and built.history[6] > 0.6


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("codec.adaptive.tiers=[]", "catch-all tier"),
        ("codec.adaptive.profiles_mbps=[0]", "positive bandwidths"),
        ("codec.adaptive.bandwidth=measured", "is not one of auto, network, simulated"),
        ("codec.adaptive.bandwidth=network", "needs a simulated network"),
    ],
)
def test_bad_adaptive_settings(override, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment([*BASE, "codec=adaptive", override, "tracking=none"]))


def test_adaptive_tiers_follow_the_simulated_network_uplinks():
    """With network=mixed the codec tier of a node is decided by the same uplink the clock uses."""
    built = build(
        compose_experiment(
            [*BASE, "num_rounds=1", "codec=adaptive", "network=mixed", "tracking=none"]
        )
    )
    run(InProcessGrid(real_app, 8), built)
    comp, network = built.strategy.compression, built.strategy.stragglers.network
    for node in range(1, 9):
        up = network.node(node).up_mbps
        assert comp.bandwidth(node) == up
        assert comp.tier(node) is next(
            t for t in comp.tiers if t.max_mbps is None or up <= t.max_mbps
        )
    independent = build(
        compose_experiment(
            [
                *BASE,
                "codec=adaptive",
                "network=mixed",
                "codec.adaptive.bandwidth=simulated",
                "tracking=none",
            ]
        )
    )
    assert independent.strategy.compression.bandwidth(3) in (0.5, 2.0, 10.0, 100.0)
