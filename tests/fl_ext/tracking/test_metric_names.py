"""MLflow metric names: every flat name the strategy reports lands in a chart section."""

import logging

import pytest

from fl_ext.tracking.metric_names import metric_key, mlflow_metrics
from fl_ext.validation import RejectReason

# every flat name the round engine and its parts report (strategies/, fl_ext/privacy/)
FLAT = [
    "test_accuracy", "test_loss", "fed_eval_accuracy", "fed_eval_loss",
    "fed_eval_received_accuracy", "fed_eval_received_loss", "train_loss", "clients_valid",
    "clients_selected", "clients_replied", "clients_failed", "clients_rejected",
    "bytes_down", "bytes_up", "bytes_down_cum", "bytes_up_cum", "round_skipped",
    "byzantine_in_round", "eval_clients_selected", "eval_clients_replied",
    "eval_clients_rejected", "late_replies_drained", "clients_dropped", "clients_late",
    "clients_completed", "straggler_index", "sim_round_s", "round_close_s",
    "train_reply_s_median", "train_reply_s_max", "train_reply_straggler_index",
    "dp_delta", "dp_epsilon_client_level", "dp_epsilon_sample_level_max", "dp_clip",
    "dp_clipped_fraction", "dp_participants", "dp_noise_multiplier", "dp_sample_rate",
    "dp_expected_clients", "dp_clients_exhausted", "clients_tier0", "clients_tier1",
    "sim_upload_s_max", "sim_upload_s_median", "sim_time_s", "train_time_s",
    "round_time_s", "wall_time_s", "time_to_target_s", "sim_time_to_target_s",
    *(f"rejected_{r.value}" for r in RejectReason),
]  # fmt: skip
SECTIONS = ("accuracy", "bytes", "clients", "dp", "loss", "time")


def test_every_reported_name_has_a_section_and_no_two_collide():
    names = [metric_key(n) for n in FLAT]
    assert len(set(names)) == len(FLAT)
    assert {n.split("/")[0] for n in names} == set(SECTIONS)  # nothing falls into other/


@pytest.mark.parametrize(
    ("flat", "mlflow"),
    [
        ("test_accuracy", "accuracy/test"),
        ("fed_eval_accuracy", "accuracy/fed_eval"),
        ("fed_eval_received_loss", "loss/fed_eval_received"),
        ("train_loss", "loss/train"),
        ("clients_replied", "clients/replied"),
        ("eval_clients_selected", "clients/eval_selected"),
        ("rejected_norm_too_large", "clients/rejected_norm_too_large"),
        ("bytes_up_cum", "bytes/up_cum"),
        ("round_time_s", "time/round_s"),
        ("time_to_target_s", "time/to_target_s"),
        ("dp_epsilon_client_level", "dp/epsilon_client_level"),
        ("accuracy/test", "accuracy/test"),  # already an MLflow name
        ("something_new", "other/something_new"),
    ],
)
def test_names(flat, mlflow):
    assert metric_key(flat) == mlflow


def test_accuracy_and_loss_sections_sort_before_the_counters():
    """MLflow lists chart sections by name: the test accuracy comes first."""
    names = sorted(metric_key(n) for n in FLAT)
    assert names[0].startswith("accuracy/") and "accuracy/test" in names[:3]


def test_a_collision_keeps_both_values(caplog):
    with caplog.at_level(logging.WARNING):
        out = mlflow_metrics({"accuracy/test": 0.5, "test_accuracy": 0.6})
    assert out == {"accuracy/test": 0.5, "other/test_accuracy": 0.6}
    assert "would overwrite" in caplog.text
