"""Chan's merge against numpy on the pooled data in float64; the noise's scale and ranges."""

import math

import numpy as np
import pytest

from fl_ext.stats import GaussianMomentsNoise, Moments, merge, merge_all


def _pooled(parts):
    return np.concatenate(parts, axis=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_merged_moments_equal_numpy_on_the_pooled_data(channels):
    rng = np.random.default_rng(0)
    parts = [rng.random((n, channels, 5, 4)) for n in (1, 7, 30, 2, 100)]
    merged = merge_all([Moments.of(p) for p in parts])
    pooled = _pooled(parts)
    expect_mean = pooled.mean(axis=(0, 2, 3))
    expect_var = pooled.var(axis=(0, 2, 3))
    assert merged.count.tolist() == [pooled.shape[0] * 20] * channels
    np.testing.assert_allclose(merged.mean, expect_mean, rtol=1e-13)
    np.testing.assert_allclose(merged.variance(), expect_var, rtol=1e-12)
    np.testing.assert_allclose(merged.std(), np.sqrt(expect_var), rtol=1e-12)


def test_merge_stays_exact_where_the_sum_of_squares_formula_loses_every_digit():
    rng = np.random.default_rng(1)
    parts = [1e8 + rng.normal(0, 1e-3, size=(n, 1, 1, 1)) for n in (50, 80, 70)]
    pooled = _pooled(parts).astype(np.float64)
    truth = float(np.var(pooled - 1e8))  # shifting is exact here; variance ~1e-6
    merged = merge_all([Moments.of(p) for p in parts])
    assert merged.variance()[0] == pytest.approx(truth, rel=1e-6)
    naive = float((pooled**2).sum() / pooled.size - pooled.mean() ** 2)  # sum x^2 - n mean^2
    assert abs(naive - truth) > 0.5 * truth  # the formula the module avoids: no digit right


def test_empty_is_the_identity_and_order_does_not_matter():
    rng = np.random.default_rng(2)
    a, b = Moments.of(rng.random((10, 2, 3, 3))), Moments.of(rng.random((4, 2, 3, 3)))
    assert merge(Moments.empty(2), a).mean.tolist() == a.mean.tolist()
    ab, ba = merge(a, b), merge(b, a)
    np.testing.assert_allclose(ab.mean, ba.mean, rtol=1e-15)
    np.testing.assert_allclose(ab.m2, ba.m2, rtol=1e-14)
    assert Moments.from_json(ab.to_json()).m2.tolist() == ab.m2.tolist()


def test_invalid_moments_and_merges_are_refused():
    with pytest.raises(ValueError, match="one length"):
        Moments(np.ones(2, np.int64), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="m2"):
        Moments(np.ones(1, np.int64), np.zeros(1), -np.ones(1))
    with pytest.raises(ValueError, match="finite"):
        Moments(np.ones(1, np.int64), np.array([math.nan]), np.zeros(1))
    with pytest.raises(ValueError, match="channels"):
        merge(Moments.empty(1), Moments.empty(2))
    with pytest.raises(ValueError, match="at least one"):
        merge_all([])


def test_noise_has_the_calibrated_scale_and_stays_in_the_possible_range():
    rng = np.random.default_rng(3)
    pixels = 16
    exact = Moments.of(rng.random((400, 1, 4, 4)))
    noise = GaussianMomentsNoise(noise_multiplier=2.0, value_range=(0.0, 1.0), pixels=pixels)
    draws = [noise.apply(exact, np.random.default_rng(s)) for s in range(400)]
    means = np.array([d.mean[0] for d in draws])
    # sum of (x - 1/2) gets noise sd z * sqrt(1 + 2C) * pixels * r: mean sd ~ that / count
    expected_sd = 2.0 * math.sqrt(3) * pixels * 0.5 / exact.count[0]
    assert np.std(means) == pytest.approx(expected_sd, rel=0.25)
    assert abs(np.mean(means) - exact.mean[0]) < 4 * expected_sd / math.sqrt(len(draws)) + 1e-3
    for d in draws:
        assert 0.0 <= d.mean[0] <= 1.0
        assert 0.0 <= d.variance()[0] <= 0.25
    same = (
        noise.apply(exact, np.random.default_rng(7)),
        noise.apply(exact, np.random.default_rng(7)),
    )
    assert same[0].mean.tolist() == same[1].mean.tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"value_range": (1.0, 0.0)}, "value_range"),
        ({"pixels": 0}, "pixels"),
    ],
)
def test_noise_settings_are_checked(kwargs, match):
    settings = {"noise_multiplier": 1.0, "value_range": (0.0, 1.0), "pixels": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        GaussianMomentsNoise(**settings)
