"""The ledger: records, budgets (check then apply), persistence and restore."""

import json

import pytest

from fl_ext.privacy import BudgetExceeded, GaussianSteps, PrivacyLedger, compute_epsilon

ROUND = GaussianSteps(1.0, 0.1, 1)


def _ledger(tmp_path, **kw):
    return PrivacyLedger.open(tmp_path / "ledger.json", accountant="rdp", delta=1e-5, **kw)


def test_records_and_epsilon_come_from_the_histories(tmp_path):
    ledger = _ledger(tmp_path)
    for r in (1, 2, 3):
        rec = ledger.record_round(
            r,
            mechanism="client_level_gaussian",
            client_level=ROUND,
            sample_level={"0": GaussianSteps(1.1, 0.05, 20), "1": GaussianSteps(1.1, 0.02, 50)},
            details={"dp_clip": 1.0},
        )
    want_client = compute_epsilon([GaussianSteps(1.0, 0.1, 3)], 1e-5, "rdp")
    assert rec["client_level_epsilon"] == pytest.approx(want_client)
    e0 = compute_epsilon([GaussianSteps(1.1, 0.05, 60)], 1e-5, "rdp")
    e1 = compute_epsilon([GaussianSteps(1.1, 0.02, 150)], 1e-5, "rdp")
    assert rec["sample_level_epsilon_max"] == pytest.approx(max(e0, e1))  # parallel composition
    assert ledger.metrics()["dp_epsilon_client_level"] == pytest.approx(want_client)
    assert rec["dp_clip"] == 1.0 and rec["round"] == 3


def test_restore_continues_spending(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.record_round(1, mechanism="x", client_level=ROUND)
    ledger.record_round(2, mechanism="x", client_level=ROUND)
    again = _ledger(tmp_path)
    assert again.client_level_epsilon() == pytest.approx(ledger.client_level_epsilon())
    again.record_round(1, mechanism="x", client_level=ROUND)
    assert again.client_level_epsilon() == pytest.approx(
        compute_epsilon([GaussianSteps(1.0, 0.1, 3)], 1e-5, "rdp")
    )
    assert len(json.loads((tmp_path / "ledger.json").read_text())["rounds"]) == 3


def test_budget_stops_at_the_last_round_that_fits(tmp_path):
    budget = compute_epsilon([GaussianSteps(1.0, 0.1, 4)], 1e-5, "rdp") + 1e-9
    ledger = _ledger(tmp_path, target_epsilon=budget)
    assert ledger.rounds_that_fit(ROUND, 100) == 4
    for r in range(1, 5):
        assert ledger.client_level_fits(ROUND)
        ledger.record_round(r, mechanism="x", client_level=ROUND)
    assert not ledger.client_level_fits(ROUND)
    before = ledger.to_json()
    with pytest.raises(BudgetExceeded, match="round 5 would take client-level epsilon"):
        ledger.record_round(5, mechanism="x", client_level=ROUND)
    assert ledger.to_json() == before  # nothing spent
    assert ledger.client_level_epsilon() <= budget


def test_client_budget_is_per_client(tmp_path):
    step = GaussianSteps(1.0, 0.1, 10)
    budget = compute_epsilon([GaussianSteps(1.0, 0.1, 20)], 1e-5, "rdp") + 1e-9
    ledger = _ledger(tmp_path, client_target_epsilon=budget)
    ledger.record_round(1, mechanism="dp_sgd", sample_level={"a": step, "b": step})
    ledger.record_round(2, mechanism="dp_sgd", sample_level={"a": step})
    assert not ledger.sample_level_fits("a", step) and ledger.sample_level_fits("b", step)
    with pytest.raises(BudgetExceeded, match="client\\(s\\) a"):
        ledger.record_round(3, mechanism="dp_sgd", sample_level={"a": step, "b": step})
    assert len(ledger.sample_level["b"]) == 1  # the whole round was refused


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot be read"),
        ('{"format": "other"}', "not an fl-ext privacy ledger"),
        (
            '{"format": "fl-ext-privacy-ledger/1", "accountant": "pld", "delta": 1e-05}',
            "accountant='pld'",
        ),
        (
            '{"format": "fl-ext-privacy-ledger/1", "accountant": "rdp", "delta": 1e-05, '
            '"client_level": [[1.0, 2.0, 1]], "sample_level": {}, "rounds": []}',
            "sample rate",
        ),
    ],
)
def test_bad_ledger_files_are_refused(tmp_path, content, match):
    (tmp_path / "ledger.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        _ledger(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"target_epsilon": 0.0}, "target_epsilon must be > 0"),
        ({"target_epsilon": -1.0}, "target_epsilon must be > 0"),
        ({"accountant": "gdp"}, "unknown accountant"),
    ],
)
def test_bad_settings(kwargs, match):
    settings = {"accountant": "rdp", "delta": 1e-5, **kwargs}
    with pytest.raises(ValueError, match=match):
        PrivacyLedger(**settings)
