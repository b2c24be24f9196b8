"""LoRA fine-tuning through the real engine and ClientApp: only adapters travel, modes exact."""

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fl_ext.models.lora import adapter_state, product_mean, truncate
from fl_ext.params import get_weights
from flwr_records import named_array_record
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.lora_backbone import main as make_backbone
from simulations.run_loop import run

BASE = [
    "model=mlp", "num_rounds=2", "fraction_evaluate=0.5", "tracking=none",
    "checkpoint.enabled=false", "local_epochs=1", "lr=0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backbone") / "mlp.pt"
    make_backbone(["--model", "mlp", "--epochs", "3", "--out", str(out)])
    return out


def lora(backbone, *more):
    return [*BASE, "adapter=lora", f"adapter.backbone={backbone}", "adapter.rank=4", *more]


@pytest.mark.parametrize("mode", ["ffa", "fedavg_ab"])  # flexlora: by hand below
def test_each_mode_fine_tunes_only_the_adapters(backbone, mode):
    built = build(compose_experiment(lora(backbone, f"adapter.mode={mode}")))
    backbone_before = {k: v.clone() for k, v in built.model.inner.named_parameters()
                       if "lora_" not in k}  # fmt: skip
    result = run(InProcessGrid(client_app, 4), built)
    names = list(result.arrays.keys())
    assert names and all(".lora_" in n for n in names)
    assert all(".lora_B." in n for n in names) == (mode == "ffa")  # FFA: only B travels
    assert built.strategy.round_log.failed == 0 and not built.strategy.round_log.rejected
    assert built.strategy.round_log.eval_rejected == 0  # evaluation sees the same schema
    for k, v in built.model.inner.named_parameters():
        if "lora_" not in k:
            assert torch.equal(v, backbone_before[k]), k  # the backbone never moves
    up = built.strategy.round_log.bytes_up
    full = sum(p.numel() * 4 for k, p in built.model.inner.named_parameters() if "lora_" not in k)
    assert up < 4 * full / 10  # 4 clients' uploads: far below one full model each
    assert np.isfinite(built.history[2])


def test_flexlora_aggregate_is_the_truncated_exact_product_mean(backbone):
    """One round by hand: the new global adapters are truncate(mean B_i A_i), not mean A, B."""
    built = build(
        compose_experiment(lora(backbone, "adapter.mode=flexlora", "fraction_evaluate=0"))
    )
    strategy = built.strategy
    grid = InProcessGrid(client_app, 3)
    arrays = named_array_record(get_weights(built.model))
    messages = list(
        strategy.configure_train(1, arrays, ConfigRecord(dict(built.train_config)), grid)
    )
    replies = grid.send_and_receive(messages)
    updates, accepted = strategy.accept_train(1, replies)
    new, _ = strategy.finish_train(1, updates, accepted)
    states = [r.arrays for r in accepted]
    counts = np.array([r.num_examples for r in accepted], dtype=np.float64)
    w = counts / counts.sum()
    got = dict(zip(new.keys(), new.to_numpy_ndarrays(), strict=True))
    spec = built.model.spec
    module = next(k for k in got if ".lora_A." in k).split(".lora_A.")[0]
    ka, kb = f"{module}.lora_A.default.weight", f"{module}.lora_B.default.weight"
    exact = product_mean([s[ka] for s in states], [s[kb] for s in states], weights=w,
                         scaling=spec.scaling)  # fmt: skip
    a, b = truncate(exact, rank=spec.rank, scaling=spec.scaling)
    np.testing.assert_allclose(spec.scaling * got[kb] @ got[ka], spec.scaling * b @ a, atol=1e-5)


def test_a_client_refuses_a_backbone_with_another_hash(backbone, tmp_path):
    built = build(compose_experiment(lora(backbone)))
    torch.save({k: v + 1 for k, v in torch.load(backbone).items()}, backbone.with_suffix(".bad"))
    backbone.rename(tmp_path / "good.pt")
    backbone.with_suffix(".bad").rename(backbone)  # same path, other bytes
    try:
        run(InProcessGrid(client_app, 3), built)
        assert built.strategy.round_log.failed == 3  # every client refuses: clear error replies
        assert built.history[2] == built.history[0]  # nothing was aggregated
    finally:
        (tmp_path / "good.pt").replace(backbone)


@pytest.mark.parametrize(
    ("more", "match"),
    [
        (["adapter.mode=sgd"], "adapter.mode must be one of"),
        (["adapter.rank=0"], "rank must be"),
        (["privacy=dp_sgd"], "dp_sgd is not supported"),
        (["submodel=heterofl"], "cannot be combined"),
        (["model=cnn"], "does not fit"),
    ],
)
def test_bad_adapter_configs_fail_at_start(backbone, more, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment(lora(backbone, *more)))


def test_a_missing_backbone_is_a_clear_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build(compose_experiment([*BASE, "adapter=lora", f"adapter.backbone={tmp_path}/no.pt"]))
    with pytest.raises(ConfigError, match=r"adapter\.backbone is required"):
        build(compose_experiment([*BASE, "adapter=lora"]))


def test_adapter_state_is_the_models_state(backbone):
    built = build(compose_experiment(lora(backbone)))
    assert list(built.model.state_dict()) == list(adapter_state(built.model.inner))


def one_round(built, nodes=4):
    strategy = built.strategy
    grid = InProcessGrid(client_app, nodes)
    arrays = named_array_record(get_weights(built.model))
    config = ConfigRecord(dict(built.train_config))
    messages = list(strategy.configure_train(1, arrays, config, grid))
    replies = grid.send_and_receive(messages)
    updates, accepted = strategy.accept_train(1, replies)
    new, _ = strategy.finish_train(1, updates, accepted)
    got = dict(zip(new.keys(), new.to_numpy_ndarrays(), strict=True))
    return messages, accepted, got


def client_delta(reply, module, scale, a_fixed=None):
    """s B_i A_i of one client's reply (its own rank)."""
    b = reply.arrays[f"{module}.lora_B.default.weight"]
    a = (
        a_fixed[: b.shape[1]]
        if a_fixed is not None
        else reply.arrays[f"{module}.lora_A.default.weight"]
    )
    return scale * b.astype(np.float64) @ a.astype(np.float64)


@pytest.mark.parametrize("mode", ["ffa", "flexlora"])
def test_per_client_ranks_keep_the_aggregate_exact(backbone, mode):
    more = [f"adapter.mode={mode}", "adapter.ranks=[1,2,4]", "adapter.shares=[1,1,2]",
            "fraction_evaluate=0"]  # fmt: skip
    built = build(compose_experiment(lora(backbone, *more)))
    messages, accepted, got = one_round(built)
    ranks = sorted(int(m.content["config"]["adapter-rank"]) for m in messages)
    assert ranks == [1, 2, 4, 4]
    spec = built.model.spec
    s = spec.scaling  # alpha / R: every party's scale
    counts = np.array([r.num_examples for r in accepted], dtype=np.float64)
    w = counts / counts.sum()
    inner = dict(built.model.inner.named_parameters())
    module = "net.1"
    a_fixed = inner[f"{module}.lora_A.default.weight"].detach().numpy() if mode == "ffa" else None
    exact = sum(wi * client_delta(r, module, s, a_fixed) for wi, r in zip(w, accepted, strict=True))
    b_new = got[f"{module}.lora_B.default.weight"].astype(np.float64)
    if mode == "ffa":  # the zero-padded mean of B is the exact mean of the products
        np.testing.assert_allclose(s * b_new @ a_fixed, exact, atol=1e-5)
    else:  # FlexLoRA: the best rank-R approximation of the exact mean
        a_new = got[f"{module}.lora_A.default.weight"].astype(np.float64)
        sv = np.linalg.svd(exact, compute_uv=False)
        err = np.linalg.norm(s * b_new @ a_new - exact)
        assert err == pytest.approx(np.sqrt((sv[spec.rank :] ** 2).sum()), abs=1e-5)
    # a rank-1 client's upload is a quarter of a rank-4 one's
    by_rank = {int(m.content["config"]["adapter-rank"]): m.metadata.dst_node_id for m in messages}
    sizes = {r.node_id: sum(a.size for a in r.arrays.values()) for r in accepted}
    assert sizes[by_rank[1]] * 4 == sizes[by_rank[4]]


def test_registered_versions_say_which_adapter_and_submodel(backbone):
    from simulations.finish import model_variant_tags

    tags = model_variant_tags(compose_experiment(lora(backbone, "adapter.mode=flexlora")))
    assert tags["adapter"] == "lora flexlora rank 4 alpha 16" and tags["backbone"] == str(backbone)
    tags = model_variant_tags(compose_experiment([*BASE, "submodel=fjord"]))
    assert tags == {"submodel": "ordered_dropout widths [0.25, 0.5, 1.0]"}
