"""The asynchronous study's command on a tiny budget: real runs, figures and curves written."""

import json

from simulations.async_study import main, summary


def test_the_study_runs_each_setting_within_the_same_client_computation(tmp_path, capsys):
    out, figures_file = tmp_path / "study.png", tmp_path / "study.json"
    figures = main([
        "--trainings", "30", "--seeds", "0", "--settings", "fedavg", "fedbuff",
        "--out", str(out), "--json", str(figures_file), "model=mlp", "local_epochs=1",
    ])  # fmt: skip
    assert out.stat().st_size > 0
    saved = json.loads(figures_file.read_text())
    assert set(saved["figures"]) == set(figures) == {"fedavg", "fedbuff"}
    for label in ("fedavg", "fedbuff"):
        curve = saved["curves"][label]["0"]
        assert curve and all(p["trainings"] <= 30 for p in curve)
        clock = [p["sim_time_s"] for p in curve]
        assert clock == sorted(clock) and clock[0] > 0
    assert len(saved["curves"]["fedavg"]["0"]) == 3  # 10 trainings per round
    assert "| fedbuff |" in capsys.readouterr().out


def test_speedup_is_per_seed_against_fedavg_and_absent_when_one_never_reached():
    def curve(times_accs):
        return [{"sim_time_s": t, "accuracy": a, "trainings": 10.0 * i}
                for i, (t, a) in enumerate(times_accs, 1)]  # fmt: skip

    curves = {
        "fedavg": {0: curve([(10, 0.5), (40, 0.92)]), 1: curve([(10, 0.5), (80, 0.95)])},
        "fedbuff": {0: curve([(5, 0.91)]), 1: curve([(5, 0.3), (10, 0.6)])},
    }
    got = summary(curves, 0.9)
    assert got["fedavg"]["speedup_vs_fedavg"] == 1.0
    assert got["fedbuff"]["speedup_vs_fedavg"] == 8.0 and got["fedbuff"]["speedup_seeds"] == 1
    assert got["fedbuff"]["time_to_target_mean_s"] is None  # seed 1 never reached 0.9
    assert got["fedbuff"]["final_accuracy_mean"] == (0.91 + 0.6) / 2
