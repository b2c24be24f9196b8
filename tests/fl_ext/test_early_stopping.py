"""Early stopping on a round metric."""

import pytest

from fl_ext.early_stopping import EarlyStopping


def test_stops_after_patience_rounds_without_an_improvement_of_min_delta():
    stop = EarlyStopping(patience=2, min_delta=0.01, metric="test_loss")
    losses = [1.0, 0.5, 0.495, 0.3, 0.299, 0.2995]  # 0.495 and 0.299: better by < 0.01
    reasons = [stop.update(r, {"test_loss": v}) for r, v in enumerate(losses, start=1)]
    assert reasons[:5] == [None] * 5  # round 4 improved, so the wait restarted
    assert "best 0.3000 in round 4" in reasons[5] and "for 2 rounds" in reasons[5]


def test_accuracy_is_maximized_and_missing_rounds_do_not_count():
    stop = EarlyStopping(patience=1, metric="test_accuracy")
    assert stop.update(1, {"test_accuracy": 0.5}) is None
    assert stop.update(2, {}) is None and stop.update(3, {"test_accuracy": float("nan")}) is None
    assert stop.update(4, {"test_accuracy": 0.6}) is None
    assert "test_accuracy did not improve" in stop.update(5, {"test_accuracy": 0.6})


def test_state_round_trip():
    a = EarlyStopping(patience=3)
    for r, v in enumerate([1.0, 0.9, 0.95], start=1):
        a.update(r, {"test_loss": v})
    b = EarlyStopping(patience=3)
    b.load_state_dict(a.state_dict())
    assert b.update(4, {"test_loss": 0.95}) is None
    assert b.update(5, {"test_loss": 0.95}) is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": 0},
        {"patience": 1.5},
        {"patience": 2, "min_delta": -1},
        {"patience": 2, "metric": "bytes_up"},
    ],
)
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match="early_stopping"):
        EarlyStopping(**kwargs)
