import pytest

from fl_ext.selection import UniformSelector


def test_seeded_and_sized():
    a, b = (
        UniformSelector(fraction=0.3, minimum=2, seed=4),
        UniformSelector(fraction=0.3, minimum=2, seed=4),
    )
    nodes = list(range(100, 120))
    picks = [a.select(nodes) for _ in range(5)]
    assert picks == [b.select(list(reversed(nodes))) for _ in range(5)]  # order of ids irrelevant
    assert all(len(p) == 6 and len(set(p)) == 6 and set(p) <= set(nodes) for p in picks)
    assert len({tuple(p) for p in picks}) > 1


def test_minimum_and_available_bound():
    sel = UniformSelector(fraction=0.1, minimum=3, seed=0)
    assert sel.sample_size(10) == 3
    assert sel.sample_size(2) == 2
    assert UniformSelector(fraction=1.0, minimum=1).select([3, 1, 2]) == [1, 2, 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraction": 0, "minimum": 1},
        {"fraction": 1.2, "minimum": 1},
        {"fraction": 0.5, "minimum": 0},
    ],
)
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        UniformSelector(**kwargs)
