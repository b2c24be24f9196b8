"""Server-side Gaussian mechanism on clipped client updates; adaptive clipping direction."""

import numpy as np
import pytest
import torch

from fl_ext.privacy import AdaptiveClipping, ClientLevelGaussian


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_noiseless_equals_clipped_sum_over_expected_count_in_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 50)) * rng.uniform(0.1, 5, size=(7, 1))
    out, clip, figures = ClientLevelGaussian(noise_multiplier=0.0, expected_clients=10.0)(
        torch.tensor(x, dtype=torch.float32), 1.0, _gen()
    )
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    want = (x * np.minimum(1.0, 1.0 / norms)).sum(axis=0) / 10.0
    np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-5, atol=1e-7)
    assert clip == 1.0
    assert figures["dp_clipped_fraction"] == pytest.approx(float((norms > 1).mean()))


def test_noise_has_the_stated_standard_deviation():
    x = torch.zeros(3, 200_000)
    out, _, _ = ClientLevelGaussian(noise_multiplier=2.0, expected_clients=4.0)(x, 0.5, _gen())
    assert float(out.double().std()) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.01)


def test_adaptive_clip_moves_towards_the_quantile():
    gen = _gen(1)
    mech = ClientLevelGaussian(
        noise_multiplier=1.0,
        expected_clients=100.0,
        adaptive=AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_noise_multiplier=5),
    )
    norms = torch.linspace(1.0, 10.0, 100)  # median about 5.5
    x = torch.zeros(100, 4)
    x[:, 0] = norms
    clip = 50.0  # everything fits: the bound must shrink
    _, nxt, _ = mech(x, clip, gen)
    assert nxt < clip
    clip = 0.1  # nothing fits: it must grow
    _, nxt, _ = mech(x, clip, gen)
    assert nxt > clip
    clip = 50.0
    for _ in range(100):
        _, clip, _ = mech(x, clip, gen)
    assert 4.0 < clip < 7.0


def test_adaptive_noise_split_and_bad_values():
    ad = AdaptiveClipping(count_noise_multiplier=10.0)
    sigma_update = ad.update_noise_multiplier(1.0)
    assert sigma_update**-2 + (2 * 10.0) ** -2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="too large for adaptive clipping"):
        ClientLevelGaussian(noise_multiplier=30.0, expected_clients=5, adaptive=ad)
    with pytest.raises(ValueError, match="target_quantile"):
        AdaptiveClipping(target_quantile=1.0)
    with pytest.raises(ValueError, match="expected_clients"):
        ClientLevelGaussian(noise_multiplier=1.0, expected_clients=0)
    with pytest.raises(ValueError, match="clipping bound"):
        ClientLevelGaussian(noise_multiplier=1.0, expected_clients=1)(torch.ones(2, 2), 0.0, _gen())


def test_no_participant_releases_pure_noise():
    out, clip, figures = ClientLevelGaussian(noise_multiplier=1.0, expected_clients=2.0)(
        torch.zeros(0, 1000), 1.0, _gen()
    )
    assert figures["dp_participants"] == 0 and figures["dp_clipped_fraction"] == 0.0
    assert float(out.std()) == pytest.approx(0.5, rel=0.1) and clip == 1.0
