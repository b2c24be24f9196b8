from collections import OrderedDict

import numpy as np
import pytest

from fl_ext.params import ParamSpec
from fl_ext.validation import (
    RejectReason,
    check_arrays,
    check_example_count,
    check_metrics,
    check_update_norm,
)

GOOD = OrderedDict(w=np.zeros((2, 3), np.float32), b=np.zeros(3, np.float32))
SPEC = ParamSpec.of(GOOD)


def _with(name, value):
    arrays = OrderedDict(GOOD)
    arrays[name] = value
    return arrays


def test_good_arrays_pass():
    assert check_arrays(GOOD, SPEC) is None


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        (OrderedDict(w=GOOD["w"]), RejectReason.KEYS_MISMATCH),
        (OrderedDict(b=GOOD["b"], w=GOOD["w"]), RejectReason.KEYS_MISMATCH),
        (_with("extra", np.zeros(1, np.float32)), RejectReason.KEYS_MISMATCH),
        (_with("w", np.zeros((3, 2), np.float32)), RejectReason.SHAPE_MISMATCH),
        (_with("w", np.zeros((2, 3), np.float64)), RejectReason.DTYPE_MISMATCH),
        (_with("b", np.array([0, np.nan, 0], np.float32)), RejectReason.NON_FINITE),
        (_with("b", np.array([0, np.inf, 0], np.float32)), RejectReason.NON_FINITE),
    ],
)
def test_bad_arrays_are_rejected_with_reason(arrays, reason):
    rejection = check_arrays(arrays, SPEC)
    assert rejection is not None and rejection.reason is reason
    assert rejection.detail


@pytest.mark.parametrize("value", [1, 7, 7.0, 100])
def test_valid_counts(value):
    assert check_example_count(value, max_examples=100) is None


@pytest.mark.parametrize(
    "value", [0, -3, 2.5, float("nan"), float("inf"), True, "10", None, 101, 10**12]
)
def test_invalid_counts(value):
    rejection = check_example_count(value, max_examples=100)
    assert rejection is not None and rejection.reason is RejectReason.BAD_EXAMPLE_COUNT


def test_update_norm_bound():
    assert check_update_norm(5.0, 10.0) is None
    assert check_update_norm(5.0, None) is None
    assert check_update_norm(11.0, 10.0).reason is RejectReason.NORM_TOO_LARGE
    assert check_update_norm(float("nan"), None).reason is RejectReason.NON_FINITE


def test_metrics_required_finite_and_bounded():
    assert check_metrics({"loss": 0.3, "accuracy": 0.9}, ("loss",), {"accuracy": (0, 1)}) is None
    assert check_metrics({}, ("loss",)).reason is RejectReason.BAD_METRIC
    assert check_metrics({"loss": float("nan")}, ()).reason is RejectReason.BAD_METRIC
    assert (
        check_metrics({"accuracy": 1.5}, (), {"accuracy": (0, 1)}).reason is RejectReason.BAD_METRIC
    )
    assert check_metrics({"h": [1.0, float("inf")]}, ()).reason is RejectReason.BAD_METRIC
