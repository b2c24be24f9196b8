"""The statistics and monitor commands' own logic; both run end to end (real ``flwr run``, real
MLflow) as tasks of the pipeline in tests/pipelines, and in-process in test_monitor.py."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ["dataset=digits", "model=mlp"]


def test_the_verdict_is_printed_with_its_reasons_and_gates_the_exit_code_on_request():
    from simulations.monitor import summary_lines, verdict_exit

    report = {
        "model": "m", "version": "3", "accuracy": 0.5, "reference_accuracy": 0.9,
        "reference": "fed_eval_accuracy", "clients": 4, "degraded": True,
        "reasons": ["accuracy 0.5000 is 0.4000 below", "data drifted: ..."],
    }  # fmt: skip
    lines = summary_lines(report)
    assert lines[0].startswith("m v3: DEGRADED, federated accuracy 0.5000 on 4 clients")
    assert lines[1:] == ["  - accuracy 0.5000 is 0.4000 below", "  - data drifted: ..."]
    assert verdict_exit(report, fail_on_degraded=True) == 3
    assert verdict_exit(report, fail_on_degraded=False) == 0
    healthy = {**report, "degraded": False, "reasons": []}
    assert summary_lines(healthy) == [lines[0].replace("DEGRADED", "healthy")]
    assert verdict_exit(healthy, fail_on_degraded=True) == 0


@pytest.mark.parametrize(
    ("module", "args", "key"),
    [
        ("simulations.federated_stats", ["task=monitor"], "task"),
        ("simulations.monitor", ["--model", "m@best", "monitor.max_drop=0.1"], "monitor.max_drop"),
        ("simulations.monitor", ["--model", "m@best", "+task=train"], "task"),
    ],
)
def test_keys_the_command_sets_are_refused_not_silently_overridden(module, args, key, capsys):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert f"{key} is set by this command" in capsys.readouterr().err


def test_a_bad_override_is_a_config_error_before_anything_starts():
    from simulations.federated_stats import main as stats_main
    from simulations.monitor import main as monitor_main

    lines = []
    assert stats_main(["lr=-1"], write=lines.append) == 2
    assert monitor_main(["--model", "m@best", "num_round=1"], write=lines.append) == 2
    assert lines[0] == "Configuration error: lr=-1 is invalid: must be > 0"
    assert "did you mean 'num_rounds'" in lines[1]
