"""The CPU sorting-network kernels agree with the any-device ``torch.sort`` paths and float64."""

import functools

import numpy as np
import pytest
import torch

from fl_ext.aggregators.bulyan import closest_to_median_block
from fl_ext.aggregators.columnwise import columnwise
from fl_ext.aggregators.median import median_block
from fl_ext.aggregators.sortnet import closest_to_median_mean, sorted_window_mean
from fl_ext.aggregators.trimmed_mean import trimmed_mean_torch

from .test_rules import KINDS, inputs


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 64, 65])
@pytest.mark.parametrize("d", [1, 63, 64, 130])
def test_median_and_trimmed_mean_match_float64(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n * 1000 + d))
    xd = x.double().numpy()
    np.testing.assert_allclose(
        sorted_window_mean(x, (n - 1) // 2, n // 2 + 1).double(), np.median(xd, axis=0), rtol=1e-6
    )
    f = (n - 1) // 2
    want = np.sort(xd, axis=0)[f : n - f].mean(axis=0)
    np.testing.assert_allclose(sorted_window_mean(x, f, n - f).double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_kernels_equal_the_torch_sort_paths(kind):
    x = inputs(kind, n=13, d=301)
    assert torch.equal(sorted_window_mean(x, 6, 7), columnwise(x, median_block))
    assert torch.allclose(sorted_window_mean(x, 3, 10), trimmed_mean_torch(x, 3), rtol=1e-6)
    want = columnwise(x, functools.partial(closest_to_median_block, beta=5))
    assert torch.allclose(closest_to_median_mean(x, 5), want, rtol=1e-6)


def test_ties_pick_the_lower_value_like_a_stable_sort():
    # median 0.5 of (0, 1): 0 and 1 are equally close; the window takes 0 first.
    x = torch.tensor([[0.0], [1.0], [3.0], [-2.0]])
    assert closest_to_median_mean(x, 1).item() == 0.0
    assert closest_to_median_block(x, 1).item() == 0.0


def test_input_untouched_and_bad_windows_refused():
    x = torch.randn(5, 70)
    before = x.clone()
    sorted_window_mean(x, 0, 5)
    closest_to_median_mean(x, 3)
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="outside"):
        sorted_window_mean(x, 3, 3)
    with pytest.raises(ValueError, match="beta"):
        closest_to_median_mean(x, 6)


def test_half_precision_uses_the_torch_path():
    from fl_ext.aggregators import CoordinateMedian

    x = torch.randn(7, 100)
    got = CoordinateMedian(f=1)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), x.to(torch.bfloat16).float().median(dim=0).values)
