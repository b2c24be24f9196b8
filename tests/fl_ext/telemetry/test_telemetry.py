"""Telemetry math: statistics vs float64 loops, free-rider flags, suspicion, policy."""

import json

import numpy as np
import pytest
import torch

from fl_ext.telemetry import (
    FreeRiderDetector,
    QuarantinePolicy,
    SuspicionDetector,
    audit_line,
    node_stats,
    round_summary,
)

D = 2000


def honest_round(n: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """n honest updates: one common direction plus individual noise."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(D, generator=torch.Generator().manual_seed(1234))
    return common + spread * torch.randn((n, D), generator=g)


def test_node_stats_match_float64_loops_and_inputs_stay():
    x = honest_round(6, 0)
    x[2] = 0
    before = x.clone()
    agg = x.mean(dim=0)
    stats = node_stats(x, agg)
    xd, ad = x.double().numpy(), agg.double().numpy()
    med = np.median(xd, axis=0)
    for i, s in enumerate(stats):
        assert s.norm == pytest.approx(np.linalg.norm(xd[i]))
        assert s.distance_to_center == pytest.approx(np.linalg.norm(xd[i] - med))
        if i == 2:
            assert s.zero_norm and s.cosine_to_aggregate == 0.0
        else:
            want = xd[i] @ ad / (np.linalg.norm(xd[i]) * np.linalg.norm(ad))
            assert s.cosine_to_aggregate == pytest.approx(want)
    assert torch.equal(x, before)
    summary = round_summary(stats, reply_seconds=[1.0, 2.0, 3.0, 10.0], asked=8, answered=6)
    assert summary["drop_rate"] == pytest.approx(0.25)
    assert summary["reply_s_p50"] == pytest.approx(2.5)
    assert summary["reply_s_p99"] == pytest.approx(np.percentile([1, 2, 3, 10], 99))
    assert summary["cos_gap_max"] == pytest.approx(1.0)  # the zero update
    empty = round_summary([], reply_seconds=[], asked=0, answered=0)
    assert "drop_rate" not in empty and "cos_gap_mean" not in empty


def test_every_kind_of_free_rider_is_flagged_and_no_honest_node_in_50_rounds():
    det = FreeRiderDetector(seed=1)
    flagged_honest = 0
    old = None
    for r in range(50):
        x = honest_round(10, seed=r)
        ids = list(range(100, 110))
        flags = det.flags(ids, x)
        flagged_honest += len(flags)
        if r == 3:
            old = x[4].clone()
    assert flagged_honest == 0
    x = honest_round(10, seed=99)
    x[0] = 0  # unchanged global model
    x[1] = old  # a replay of round 3
    x[2] = torch.randn(D) * float(x[5].norm()) / D**0.5  # noise of the right norm
    x[3] = x[6]  # a copy of another node this round
    det2 = FreeRiderDetector(seed=1, memory=60)
    for r in range(50):
        det2.flags(list(range(10)), honest_round(10, seed=r))
    flags = det2.flags(list(range(10)), x)
    assert flags[0].startswith("unchanged") and flags[1].startswith("stale")
    assert flags[2].startswith("noise") and flags[3].startswith("duplicate")
    assert flags[6].startswith("duplicate")  # both sides of a copy
    assert set(flags) == {0, 1, 2, 3, 6}


def test_free_rider_state_round_trip():
    det = FreeRiderDetector(seed=2)
    old = honest_round(4, 0)
    det.flags([1, 2, 3, 4], old)
    again = FreeRiderDetector(seed=2)
    again.load_state_dict(det.state_dict())
    assert again.flags([9], old[:1]) == {9: "stale: replays an update of an earlier round"}


def attack_rows(kind: str, honest: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mean, std = honest.mean(dim=0), honest.std(dim=0)
    if kind == "sign_flip":
        return (-3 * mean).expand(3, -1).clone()
    if kind == "gaussian":
        return 10 * torch.randn((3, D), generator=g)
    if kind == "alie":
        return (mean - 1.5 * std).expand(3, -1).clone()
    return (
        torch.randn(D, generator=torch.Generator().manual_seed(7)) * mean.norm() / D**0.5
    ).expand(3, -1) + 0.3 * torch.randn(
        (3, D), generator=g
    )  # a fixed other direction (label-flip-like)


@pytest.mark.parametrize(
    ("kind", "caught"),
    [("sign_flip", True), ("gaussian", True), ("other_direction", True), ("alie", True)],
)
def test_suspicion_separates_strong_attacks_within_five_rounds(kind, caught):
    det = SuspicionDetector(window=5)
    g = torch.Generator().manual_seed(0)
    ids = list(range(13))
    for r in range(5):
        honest = honest_round(10, seed=r)
        scores = det.update(ids, torch.cat([honest, attack_rows(kind, honest, g)]))
    byz = min(scores[i] for i in (10, 11, 12))
    honest_max = max(scores[i] for i in range(10))
    # measured (this synthetic round: honest = common direction + unit noise, d = 2000): every
    # attack's smallest score is far above the largest honest one (ALIE: 18.7 vs 0.74; its
    # three identical rows sit 1.5 std from the mean on every coordinate, farther than any
    # honest row); real ALIE on trained models is subtler: see the governance study
    assert (byz > 3.0 and honest_max < 2.0) is caught, (byz, honest_max)


def test_policy_warns_quarantines_reinstates_and_suspends_with_reasons():
    policy = QuarantinePolicy(warn_at=2, quarantine_at=3, ttl_rounds=2, suspend_after=2)
    d = policy.decide(1, {1: 2.5, 2: 3.5, 3: 0.1}, {4: "unchanged: zero update"})
    assert [(x.node, x.action) for x in d] == [(1, "warn"), (2, "quarantine"), (4, "quarantine")]
    assert policy.is_excluded(2, 2) and policy.is_excluded(2, 3) and not policy.is_excluded(2, 4)
    assert not policy.is_excluded(1, 2)
    assert [(x.node, x.action) for x in policy.release(4)] == [(2, "reinstate"), (4, "reinstate")]
    d = policy.decide(4, {2: 5.0}, {})
    assert d[0].action == "suspend" and policy.is_excluded(2, 100)
    saved = json.loads(json.dumps(policy.state_dict()))
    again = QuarantinePolicy(warn_at=2, quarantine_at=3, ttl_rounds=2, suspend_after=2)
    again.load_state_dict(saved)
    assert again.state_dict() == policy.state_dict() and again.is_excluded(2, 50)
    row = json.loads(audit_line(d[0]))
    assert row["node"] == "2" and row["action"] == "suspend" and "suspicion 5.00" in row["reason"]
    big = 2**63 + 5  # Flower's ids are unsigned 64-bit
    policy.decide(9, {}, {big: "stale"})
    again.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert again.state(big) == "quarantined"


@pytest.mark.parametrize(
    "kwargs",
    [{"warn_at": 0}, {"warn_at": 4, "quarantine_at": 3}, {"ttl_rounds": 0}, {"suspend_after": 0}],
)
def test_bad_policy_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        QuarantinePolicy(**kwargs)
