"""Aggregation over the clients that hold each coordinate (sub-models), vs float64 loops."""

import numpy as np
import pytest
import torch

from fl_ext.aggregators import (
    AggregatorState,
    CenteredClipping,
    CoordinateMedian,
    RobustAggregation,
    WeightedMean,
)
from fl_ext.aggregators.coverage import aggregate_by_coverage, holder_groups


def nested_coverage(n: int, d: int, widths: list[float], seed: int = 0) -> torch.Tensor:
    """Client i holds the leading widths[i % len] share of the coordinates (HeteroFL-like)."""
    held = torch.zeros((n, d), dtype=torch.bool)
    for i in range(n):
        held[i, : max(1, int(np.ceil(widths[i % len(widths)] * d)))] = True
    return held


def masked_updates(held: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(held.shape, generator=g) * held


def test_weighted_mean_is_the_per_coordinate_mean_over_holders():
    held = nested_coverage(7, 50, [0.25, 0.5, 1.0])
    updates = masked_updates(held)
    weights = torch.tensor([3.0, 1.0, 2.0, 5.0, 1.0, 4.0, 2.0], dtype=torch.float64)
    before = updates.clone()
    out, stats = aggregate_by_coverage(
        updates, weights, held, RobustAggregation(rule=WeightedMean(), device="cpu"), min_holders=1
    )
    u, h, w = updates.double().numpy(), held.numpy(), weights.numpy()
    expected = np.array(
        [(w[h[:, j]] * u[h[:, j], j]).sum() / w[h[:, j]].sum() for j in range(u.shape[1])]
    )
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(updates, before)  # inputs untouched
    assert stats.groups == 3 and stats.coordinates_kept == 0 and stats.min_holders == 2
    assert stats.mean_holders == pytest.approx(h.sum(axis=0).mean())


def test_full_coverage_equals_the_rule_on_the_whole_matrix_exactly():
    held = torch.ones((5, 40), dtype=torch.bool)
    updates = masked_updates(held, seed=1)
    weights = torch.arange(1, 6, dtype=torch.float64)
    rule = RobustAggregation(rule=WeightedMean(), device="cpu")
    out, stats = aggregate_by_coverage(updates, weights, held, rule, min_holders=1)
    assert torch.equal(out, rule(updates, weights))
    assert stats.groups == 1


def test_median_sees_only_real_updates_and_thin_groups_keep_the_model():
    held = nested_coverage(6, 30, [1.0])
    held[0] = False
    held[0, :6] = True
    held[3] = False
    held[3, :6] = True  # coordinates 6.. are held by 4 clients, 0..5 by 6
    held[:, 25:] = False
    held[1, 25:] = True  # coordinates 25.. held by one client only
    updates = masked_updates(held, seed=2)
    rule = RobustAggregation(rule=CoordinateMedian(f=1), device="cpu")
    out, stats = aggregate_by_coverage(updates, None, held, rule, min_holders=rule.min_inputs())
    u, h = updates.double().numpy(), held.numpy()
    for j in range(25):
        np.testing.assert_allclose(out[j].item(), np.median(u[h[:, j], j]), rtol=1e-5, atol=1e-6)
    assert torch.all(out[25:] == 0) and stats.coordinates_kept == 5


def test_centered_clipping_center_is_sliced_and_written_back_per_group():
    held = nested_coverage(5, 20, [0.5, 1.0])
    updates = masked_updates(held, seed=3)
    state = AggregatorState(center=torch.full((20,), 0.1))
    rule = RobustAggregation(rule=CenteredClipping(tau=0.5, iterations=2), device="cpu")
    out, _ = aggregate_by_coverage(updates, None, held, rule, min_holders=1, state=state)
    assert torch.equal(state.center, out)  # the rule stores its result: here, group by group
    held_full = held.all(dim=0)
    ref = rule(updates[:, held_full], None, AggregatorState(center=torch.full((10,), 0.1)))
    torch.testing.assert_close(out[held_full], ref)


def test_holder_groups_partition_the_columns_by_pattern_with_many_clients():
    g = torch.Generator().manual_seed(0)
    held = torch.rand((70, 200), generator=g) > 0.5  # more clients than bits in an int64
    held[:, :50] = True
    groups = holder_groups(held)
    cols = torch.cat([gr.cols for gr in groups]).sort().values
    assert torch.equal(cols, torch.arange(200))
    for gr in groups:
        pattern = held[:, gr.cols[0]]
        assert torch.equal(gr.rows, torch.nonzero(pattern).flatten())
        assert torch.all(held[:, gr.cols] == pattern[:, None])


def test_bad_inputs_are_refused():
    held = torch.ones((2, 3), dtype=torch.bool)
    rule = RobustAggregation(rule=WeightedMean(), device="cpu")
    with pytest.raises(ValueError, match="must match"):
        aggregate_by_coverage(torch.zeros((2, 4)), None, held, rule, min_holders=1)
    with pytest.raises(ValueError, match="min_holders"):
        aggregate_by_coverage(torch.zeros((2, 3)), None, held, rule, min_holders=0)
    with pytest.raises(ValueError, match="bool"):
        holder_groups(torch.ones((2, 3)))
