"""Selectors and the client registry."""

from collections import Counter

import pytest

from fl_ext.selection import (
    ClientRegistry,
    OortSelector,
    PowerOfChoiceSelector,
    UniformSelector,
    WeightedSelector,
)

NODES = list(range(100, 140))  # 40 nodes


def _registry(loss_of, duration_of=lambda n: 1.0, rounds=1):
    reg = ClientRegistry()
    for n in NODES:
        if loss_of(n) is None:
            continue
        reg.on_selected([n])
        reg.on_result(n, rounds, loss=loss_of(n), num_examples=100, duration_s=duration_of(n))
    return reg


@pytest.mark.parametrize(
    "cls", [UniformSelector, OortSelector, PowerOfChoiceSelector, WeightedSelector]
)
def test_k_distinct_sorted_and_reproducible(cls):
    reg = _registry(lambda n: (n % 7) / 7)
    a = cls(fraction=0.25, minimum=2, seed=3).select(NODES, registry=reg, server_round=2)
    b = cls(fraction=0.25, minimum=2, seed=3).select(NODES, registry=reg, server_round=2)
    assert a == b == sorted(set(a)) and len(a) == 10 and set(a) <= set(NODES)


def test_oort_prefers_high_utility_and_explores_the_unknown():
    # nodes 100-119 fit badly (loss 2), 120-129 well (loss 0.1), 130-139 never seen
    reg = _registry(lambda n: 2.0 if n < 120 else (0.1 if n < 130 else None))
    sel = OortSelector(fraction=0.25, minimum=1, seed=0, explore=0.2)
    counts = Counter(n for r in range(200) for n in sel.select(NODES, registry=reg, server_round=2))
    high = sum(counts[n] for n in range(100, 120))
    low = sum(counts[n] for n in range(120, 130))
    unseen = sum(counts[n] for n in range(130, 140))
    assert low == 0  # below the cutoff of the k-th best utility
    assert unseen == 200 * 2  # explore = 20% of k = 10
    assert high == 200 * 8


def test_oort_penalizes_nodes_slower_than_the_deadline():
    reg = _registry(lambda n: 1.0, duration_of=lambda n: 10.0 if n % 2 else 1.0)
    sel = OortSelector(fraction=0.25, minimum=1, seed=0, explore=0.0, deadline_s=2.0)
    picked = [n for _ in range(50) for n in sel.select(NODES, registry=reg, server_round=2)]
    assert all(n % 2 == 0 for n in picked)  # utility x (2/10)^2 falls below the cutoff


def test_oort_participation_cap():
    reg = _registry(lambda n: 5.0 if n < 110 else 1.0)
    for n in range(100, 110):
        for r in range(3):
            reg.on_selected([n])
            reg.on_result(n, r + 2, loss=5.0, num_examples=100, duration_s=1.0)
    sel = OortSelector(fraction=0.25, minimum=1, seed=0, explore=0.0, max_participation=2)
    assert not set(sel.select(NODES, registry=reg, server_round=5)) & set(range(100, 110))


def test_power_of_choice_keeps_the_highest_losses_among_its_candidates():
    reg = _registry(lambda n: float(n - 100))
    sel = PowerOfChoiceSelector(fraction=0.25, minimum=1, seed=0, d_factor=10.0)  # d = n
    assert sel.select(NODES, registry=reg, server_round=2) == list(range(130, 140))


def test_registry_updates_and_rejects_bad_reports():
    reg = ClientRegistry()
    reg.on_selected([1, 2])
    reg.on_result(1, 3, loss=0.5, num_examples=10, duration_s=2.0)
    reg.on_result(1, 4, loss=0.5, num_examples=10, duration_s=4.0)
    reg.on_failure(2)
    r1, r2 = reg.get(1), reg.get(2)
    assert r1.utility == 5.0 and r1.duration_s == 3.0 and r1.last_round == 4
    assert r2.reliability == 0.0 and reg.get(3) is None
    with pytest.raises(ValueError, match="duration"):
        reg.on_result(1, 5, loss=0.5, num_examples=10, duration_s=-1.0)
    with pytest.raises(ValueError, match="loss"):
        reg.on_result(1, 5, loss=float("nan"), num_examples=10, duration_s=1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"explore": 1.5}, "explore"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"cutoff": 0}, "cutoff"),
        ({"max_participation": 0}, "max_participation"),
        ({"fraction": 0}, "fraction"),
        ({"minimum": 0}, "minimum"),
    ],
)
def test_bad_oort_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OortSelector(**{"fraction": 0.5, "minimum": 1, **kwargs})


def test_weighted_selector_avoids_unreliable_nodes_and_favours_high_loss():
    reg = _registry(lambda n: 3.0 if n < 110 else 1.0)
    for n in range(130, 140):  # ten nodes that failed four times
        reg.on_selected([n] * 4)
        for _ in range(4):
            reg.on_failure(n)
    sel = WeightedSelector(fraction=0.25, minimum=1, seed=0)
    counts = Counter(n for _ in range(300) for n in sel.select(NODES, registry=reg))
    per = {
        "high_loss": sum(counts[n] for n in range(100, 110)) / 10,
        "normal": sum(counts[n] for n in range(110, 130)) / 20,
        "unreliable": sum(counts[n] for n in range(130, 140)) / 10,
    }
    assert per["high_loss"] > per["normal"] > 3 * per["unreliable"]


@pytest.mark.parametrize(
    "cls", [UniformSelector, OortSelector, PowerOfChoiceSelector, WeightedSelector]
)
def test_flower_node_ids_straddling_2_63_come_back_exact(cls):
    """Flower ids are random uint64; choosing from a list of them must not round them."""
    from simulations.inprocess import flower_like_node_ids

    nodes = flower_like_node_ids(40, seed=1)
    assert max(nodes) >= 2**63 > min(nodes)
    reg = ClientRegistry()
    for n in nodes[::2]:  # half explored (utility known), half never seen
        reg.on_selected([n])
        reg.on_result(n, 1, loss=float(n % 5) + 0.5, num_examples=10 + n % 90, duration_s=1.0)
    sel = cls(fraction=0.5, minimum=2, seed=0)
    for server_round in (2, 3):
        picked = sel.select(nodes, registry=reg, server_round=server_round)
        assert len(picked) == 20 and set(picked) <= set(nodes)
        assert all(type(n) is int for n in picked)
