"""DP-SGD: per-sample clipping against a float64 loop, budget refusal, model checks."""

import numpy as np
import pytest
import torch
from torch import nn

from fl_ext.data.datasets import ArrayDataset
from fl_ext.models import MLP
from fl_ext.privacy import GaussianSteps, compute_epsilon
from fl_ext.privacy.dp_sgd import (
    BudgetExhausted,
    DpSgdConfig,
    check_model,
    noise_for,
    round_plan,
    train_dp_sgd,
)
from fl_ext.training import TrainConfig


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=n).astype(np.int64)
    return ArrayDataset(x, y)


def _reference_step(model, data, clip, lr):
    """Float64: w - lr * sum_i clip_C(grad_i) / n, one sample at a time."""
    ref = MLP(input_shape=(1, 4, 4), num_classes=3, hidden=(8,)).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    total = [torch.zeros_like(p) for p in ref.parameters()]
    for i in range(len(data)):
        ref.zero_grad()
        x = torch.from_numpy(data.x[i : i + 1]).double()
        loss = nn.functional.cross_entropy(ref(x), torch.from_numpy(data.y[i : i + 1]))
        loss.backward()
        grads = [p.grad for p in ref.parameters()]
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        scale = min(1.0, clip / float(norm))
        for t, g in zip(total, grads, strict=True):
            t.add_(g * scale)
    return [p.detach() - lr * t / len(data) for p, t in zip(ref.parameters(), total, strict=True)]


@pytest.mark.parametrize("mode", ["fused", "ghost", "hooks", "functorch"])
def test_noiseless_step_equals_float64_per_sample_clipping(mode):
    torch.manual_seed(0)
    model = MLP(input_shape=(1, 4, 4), num_classes=3, hidden=(8,))
    data = _data()
    want = _reference_step(model, data, clip=0.05, lr=0.5)
    dp = DpSgdConfig(max_grad_norm=0.05, delta=1e-5, noise_multiplier=0.0, grad_sample_mode=mode)
    # batch = n: q = 1, one step over every sample (Poisson sampling with rate 1 takes all).
    train = TrainConfig(epochs=1, batch_size=len(data), lr=0.5)
    stats, entry = train_dp_sgd(model, data, train=train, dp=dp, history=[], noise_multiplier=0.0)
    assert entry == GaussianSteps(0.0, 1.0, 1) and stats.steps == 1
    for got, ref in zip(model.parameters(), want, strict=True):
        np.testing.assert_allclose(got.detach().double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)


def test_round_split_spends_what_one_long_round_spends():
    data = _data(n=100)
    q1, s1 = round_plan(len(data), 10, 1)
    q2, s2 = round_plan(len(data), 10, 2)
    assert q1 == q2 == 0.1 and s2 == 2 * s1
    two = compute_epsilon([GaussianSteps(1.0, q1, s1)] * 2, 1e-5, "rdp")
    one = compute_epsilon([GaussianSteps(1.0, q2, s2)], 1e-5, "rdp")
    assert two == pytest.approx(one, rel=1e-12)


def test_budget_refusal_trains_nothing():
    model = MLP(input_shape=(1, 4, 4), num_classes=3, hidden=(8,))
    before = [p.detach().clone() for p in model.parameters()]
    data = _data()
    dp = DpSgdConfig(max_grad_norm=1.0, delta=1e-5, target_epsilon=1.0, noise_multiplier=0.5)
    spent = [GaussianSteps(0.5, 0.5, 50)]
    with pytest.raises(BudgetExhausted, match="privacy budget exhausted: epsilon spent"):
        train_dp_sgd(
            model,
            data,
            train=TrainConfig(batch_size=12),
            dp=dp,
            history=spent,
            noise_multiplier=0.5,
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_calibrated_noise_spends_the_target_over_the_planned_rounds():
    dp = DpSgdConfig(max_grad_norm=1.0, delta=1e-5, target_epsilon=3.0, planned_rounds=10)
    q, steps = round_plan(600, 32, 2)
    sigma = noise_for(dp, q, steps)
    eps = compute_epsilon([GaussianSteps(sigma, q, steps)] * 10, 1e-5, "rdp")
    assert 2.95 < eps <= 3.0


def test_batchnorm_is_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match="BatchNorm"):
        check_model(model)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"delta": 0.0}, "delta"),
        ({"noise_multiplier": -1.0}, "sigma"),
        ({"noise_multiplier": None, "target_epsilon": None}, "noise_multiplier or target_epsilon"),
        ({"grad_sample_mode": "jax"}, "grad_sample_mode"),
    ],
)
def test_bad_dp_sgd_settings(kwargs, match):
    settings = {"max_grad_norm": 1.0, "delta": 1e-5, "noise_multiplier": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        DpSgdConfig(**settings)


def test_fused_clipping_of_a_cnn_matches_float64():
    from fl_ext.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(input_shape=(1, 8, 8), num_classes=3)
    data = _data(n=10)
    data = ArrayDataset(
        np.random.default_rng(1).normal(size=(10, 1, 8, 8)).astype(np.float32), data.y
    )
    ref = SmallCNN(input_shape=(1, 8, 8), num_classes=3).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    total = [torch.zeros_like(p) for p in ref.parameters()]
    for i in range(len(data)):
        ref.zero_grad()
        out = ref(torch.from_numpy(data.x[i : i + 1]).double())
        nn.functional.cross_entropy(out, torch.from_numpy(data.y[i : i + 1])).backward()
        grads = [p.grad for p in ref.parameters()]
        scale = min(1.0, 0.1 / float(torch.sqrt(sum((g * g).sum() for g in grads))))
        for t, g in zip(total, grads, strict=True):
            t.add_(g * scale)
    dp = DpSgdConfig(max_grad_norm=0.1, delta=1e-5, noise_multiplier=0.0)
    train = TrainConfig(epochs=1, batch_size=len(data), lr=1.0)
    train_dp_sgd(model, data, train=train, dp=dp, history=[], noise_multiplier=0.0)
    for got, p, t in zip(model.parameters(), ref.parameters(), total, strict=True):
        want = (p.detach() - t / len(data)).numpy()
        np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=1e-4, atol=1e-6)


def test_fused_refuses_layers_it_cannot_clip():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"Linear and Conv2d layers only, not 2 \(LayerNorm\)"):
        check_model(model, "fused")
    check_model(model, "ghost")  # Opacus handles LayerNorm
