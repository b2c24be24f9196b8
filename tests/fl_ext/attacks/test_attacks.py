import numpy as np
import pytest
import torch

from fl_ext.aggregators import CoordinateMedian, TrimmedMean, WeightedMean
from fl_ext.attacks import (
    ALIE,
    IPM,
    GaussianNoise,
    LineSearch,
    Mimic,
    SignFlip,
    flip_labels,
    malform,
)
from fl_ext.attacks.omniscient import alie_z

HONEST = (
    torch.randn(10, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    + 1.0
)


def test_closed_form_attacks():
    mean = HONEST.double().mean(0)
    before = HONEST.clone()
    assert torch.allclose(SignFlip()(HONEST, 3).double(), -mean.expand(3, -1), atol=1e-6)
    assert torch.allclose(
        IPM(epsilon=0.5)(HONEST, 2).double(), -0.5 * mean.expand(2, -1), atol=1e-6
    )
    z = alie_z(13, 3)
    assert z == pytest.approx(0.5024, abs=1e-3)  # s = 4, Phi^-1(9/13)
    std = HONEST.double().std(0)
    assert torch.allclose(ALIE()(HONEST, 3).double(), (mean - z * std).expand(3, -1), atol=1e-5)
    assert torch.allclose(ALIE(z=2.0)(HONEST, 1).double(), (mean - 2 * std).unsqueeze(0), atol=1e-5)
    assert torch.equal(Mimic(target=4)(HONEST, 3), HONEST[4].expand(3, -1))
    assert torch.equal(HONEST, before)
    assert SignFlip()(HONEST, 0).shape == (0, 50)


def test_gaussian_is_seeded():
    a = GaussianNoise(sigma=3.0)(HONEST, 4, torch.Generator().manual_seed(1))
    b = GaussianNoise(sigma=3.0)(HONEST, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4, 50)
    assert float(a.std()) == pytest.approx(3.0, rel=0.15)


def test_line_search_maximizes_the_damage_it_measures():
    rule = TrimmedMean(f=3)
    attack = LineSearch(attack=ALIE(), points=9, refinements=1).bind(rule)
    byz = attack(HONEST, 3)
    target = HONEST.double().mean(0)

    def damage(b):
        return float((rule(torch.cat([HONEST, b])).double() - target).norm())

    best = damage(byz)
    for z in (0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0):
        assert best >= damage(ALIE(z=z)(HONEST, 3)) - 1e-9
    assert attack.last_factor is not None
    with pytest.raises(ValueError, match="bind"):
        LineSearch(attack=IPM())(HONEST, 3)


def test_line_search_against_mean_finds_a_large_factor():
    attack = LineSearch(attack=IPM(), low=0.1, high=100.0).bind(WeightedMean())
    attack(HONEST, 3)
    assert attack.last_factor > 50  # damage grows with epsilon against the mean


def test_client_side_attacks():
    y = np.array([0, 3, 9])
    assert flip_labels(y, 10).tolist() == [9, 6, 0]
    arrays = [np.ones((2, 3), np.float32), np.ones(3, np.float32)]
    assert np.isnan(malform(arrays, "nan_update")[0]).any()
    assert np.isinf(malform(arrays, "inf_update")[1]).any()
    assert malform(arrays, "oversized")[0].max() == 1e6
    assert malform(arrays, "wrong_shape")[0].shape == (5,)
    assert arrays[0].max() == 1.0  # inputs untouched
    with pytest.raises(ValueError, match="allowed"):
        malform(arrays, "zero")


@pytest.mark.parametrize(
    "factory", [lambda: GaussianNoise(sigma=0), lambda: IPM(epsilon=-1), lambda: Mimic(target=-1)]
)
def test_bad_parameters(factory):
    with pytest.raises(ValueError):
        factory()


def test_median_resists_what_breaks_the_mean():
    byz = GaussianNoise(sigma=100.0)(HONEST, 3, torch.Generator().manual_seed(0))
    x = torch.cat([HONEST, byz])
    target = HONEST.double().mean(0)
    assert float((WeightedMean()(x).double() - target).norm()) > 50
    assert float((CoordinateMedian(f=3)(x).double() - target).norm()) < 5
