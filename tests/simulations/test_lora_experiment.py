"""LoRA fine-tuning through the real engine and ClientApp: only adapters travel, modes exact."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fl_ext.models.lora import adapter_state
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


@pytest.mark.parametrize("mode", ["ffa", "fedavg_ab", "flexlora"])
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
    from flwr.app import ConfigRecord

    from fl_ext.models.lora import product_mean, truncate
    from fl_ext.params import get_weights
    from flwr_records import named_array_record

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
