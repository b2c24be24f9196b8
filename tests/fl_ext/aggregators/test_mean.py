import numpy as np
import pytest
import torch

from fl_ext.aggregators import WeightedMean, capped_example_weights


@pytest.mark.parametrize("n,d", [(1, 5), (7, 1000), (50, 10_001)])
def test_matches_float64_reference_and_leaves_input_alone(n, d):
    gen = torch.Generator().manual_seed(n)
    updates = torch.randn(n, d, generator=gen) * torch.logspace(-3, 3, n).unsqueeze(1)
    weights = torch.rand(n, generator=gen) + 0.1
    before = updates.clone()
    out = WeightedMean()(updates, weights)
    ref = (weights.double() / weights.double().sum()) @ updates.double()
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    assert torch.equal(updates, before)
    uniform = WeightedMean()(updates)
    assert torch.allclose(uniform.double(), updates.double().mean(0), rtol=1e-5, atol=1e-4)


def test_permutation_invariant():
    updates = torch.randn(9, 33)
    weights = torch.rand(9) + 0.5
    perm = torch.randperm(9)
    a = WeightedMean()(updates, weights)
    b = WeightedMean()(updates[perm], weights[perm])
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "weights",
    [
        torch.tensor([1.0, -1.0]),
        torch.tensor([0.0, 0.0]),
        torch.tensor([1.0, float("nan")]),
        torch.ones(3),
    ],
)
def test_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        WeightedMean()(torch.zeros(2, 4), weights)


def test_bad_update_shape():
    with pytest.raises(ValueError, match="updates"):
        WeightedMean()(torch.zeros(4))


def test_capped_weights_limit_a_liar():
    counts = np.array([100, 120, 90, 1_000_000], dtype=float)
    capped = capped_example_weights(counts, cap_factor=10)
    assert capped.tolist() == [100, 120, 90, 1000]  # lower median 100 -> cap 1000
    assert capped_example_weights(counts, None).tolist() == counts.tolist()
    assert capped_example_weights(np.array([5.0, 10**9]), 10).tolist() == [5, 50]
    with pytest.raises(ValueError, match="cap_factor"):
        capped_example_weights(counts, 0.5)
    with pytest.raises(ValueError, match="counts"):
        capped_example_weights(np.array([1.0, 0.0]), 10)


@pytest.mark.parametrize("n", [3, 5, 10, 100])
def test_default_cap_bounds_one_liars_share_near_its_fair_share(n):
    counts = np.array([400.0] * (n - 1) + [1e18])
    w = capped_example_weights(counts, cap_factor=2.0)
    share = w[-1] / w.sum()
    assert share == pytest.approx(2 / (n + 1)) and share <= 2 / n
