"""The console's round line and closing summary, from a round's flat metrics."""

from strategies.progress import RunSummary, duration, progress_line

PLAIN = {
    "test_accuracy": 0.961,
    "test_loss": 0.145,
    "train_loss": 0.0955,
    "clients_selected": 10,
    "clients_replied": 10,
    "clients_rejected": 0,
    "clients_failed": 0,
    "bytes_up": 2_120_000,
    "bytes_down": 4_240_000,
    "bytes_up_cum": 21_200_000,
    "bytes_down_cum": 42_400_000,
    "round_time_s": 1.0,
    "round_skipped": 0,
}


def test_plain_round_line_has_accuracy_bytes_and_eta_and_nothing_that_does_not_apply():
    line = progress_line(PLAIN, eta_s=65)
    assert line == (
        "test acc 0.9610 loss 0.1450 | train loss 0.0955 | clients 10/10 | "
        "2.12/4.24 MB up/down | 1.00s, ETA 1m05s"
    )


def test_problems_and_epsilon_appear_when_they_apply():
    m = {
        **PLAIN,
        "clients_replied": 8,
        "clients_rejected": 1,
        "clients_late": 2,
        "dp_epsilon_client_level": 2.5,
        "round_skipped": 1,
    }
    line = progress_line(m)
    assert "clients 8/10 (1 rejected, 2 late)" in line
    assert "eps 2.50" in line and "SKIPPED" in line and "ETA" not in line


def test_eta_is_mean_round_time_times_rounds_left_and_summary_totals():
    s = RunSummary(first_round=1, num_rounds=5)
    assert s.eta_s(1) is None
    s.add(1, {**PLAIN, "round_time_s": 2.0, "test_accuracy": 0.9, "clients_rejected": 1})
    s.add(
        2,
        {
            **PLAIN,
            "round_time_s": 4.0,
            "test_accuracy": 0.8,
            "dp_epsilon_sample_level_max": 1.0,
            "dp_delta": 1e-5,
        },
    )
    assert s.eta_s(2) == 3.0 * 3
    line = s.line("privacy budget spent")
    assert line.startswith("2 rounds in 6s | test acc 0.8000 (best 0.9000 in round 1)")
    assert "epsilon 1.00 (delta 1e-05)" in line and "21.2 MB up, 42.4 MB down" in line
    assert "1 rejected" in line and "stopped early: privacy budget spent" in line


def test_duration():
    assert [duration(x) for x in (0.4, 59, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]
