"""Checkpoints, resume and rollback on the in-process grid (real ClientApp, real MLflow)."""

import itertools
import re

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fl_ext.checkpoint import CheckpointStore
from fl_ext.security import load_or_create_signing_key
from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.checkpointing import signing_key_path
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = ["dataset=digits", "model=mlp", "num_rounds=4", "fraction_train=0.75", "seed=3"]


class CrashAtRound(InProcessGrid):
    """The ServerApp dies (link lost) when round ``crash_round`` pushes its train messages."""

    def __init__(self, *args, crash_round, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_round, self.pushes = crash_round, 0

    def push_messages(self, messages):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.pushes += 1
            if self.pushes == self.crash_round:
                raise ConnectionError("ServerApp killed")
        return super().push_messages(messages)


def _store(tmp_path):
    """The run's checkpoints under tmp_path/ck, read with the default signing key."""
    return CheckpointStore(
        tmp_path / "ck", signing_key=load_or_create_signing_key(signing_key_path({}))
    )


def _runs(client, experiment="fl-ext"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _final_arrays(built):
    return [v.detach().clone() for v in built.model.state_dict().values()]


def _crash_after_round_two(tmp_path, extra=()):
    overrides = [*BASE, f"checkpoint.dir={tmp_path / 'ck'}", *extra]
    built = build(compose_experiment(overrides))
    with pytest.raises(ConnectionError):
        run(CrashAtRound(client_app, 4, crash_round=3), built)
    return overrides


def test_kill_and_resume_repeats_and_loses_no_round(tmp_path):
    straight = build(compose_experiment([*BASE, "tracking.experiment=straight"]))
    run(InProcessGrid(client_app, 4), straight)

    overrides = _crash_after_round_two(tmp_path)
    store = _store(tmp_path)
    assert store.rounds() == [1, 2]

    resumed = build(compose_experiment([*overrides, f"resume={tmp_path / 'ck'}"]))
    run(InProcessGrid(client_app, 4), resumed)
    assert store.rounds() == [1, 2, 3, 4]

    client = MlflowClient(resolve_tracking_uri())
    (found,) = _runs(client)  # one MLflow run, resumed, finished
    assert found.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "accuracy/test")]
    assert steps == [0, 1, 2, 3, 4]  # no duplicate, no gap
    assert [m.step for m in client.get_metric_history(found.info.run_id, "time/round_s")] == [
        1,
        2,
        3,
        4,
    ]
    assert found.data.tags["resumed_from"].endswith("round-000002")
    # the resumed run ends where the uninterrupted one does (selection RNG, registry and model
    # restored; the clients keep no state in this config). Alone it is bit-identical; within
    # the suite torch's thread pool may reorder float sums by an ulp.
    for a, b in zip(_final_arrays(straight), _final_arrays(resumed), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    assert resumed.history == pytest.approx(straight.history)


def test_a_round_saved_but_not_logged_is_logged_on_resume(tmp_path):
    """Crash between the checkpoint and the metrics: resume logs the saved round once."""
    overrides = [*BASE, "num_rounds=2", f"checkpoint.dir={tmp_path / 'ck'}"]
    built = build(compose_experiment(overrides))
    original = built.tracker.log_metrics

    def crash_on_round_two(step, metrics):
        if step == 2:
            raise ConnectionError("tracking server gone")
        original(step, metrics)

    built.tracker.log_metrics = crash_on_round_two
    with pytest.raises(ConnectionError):
        run(InProcessGrid(client_app, 4), built)
    resumed = build(compose_experiment([*overrides, "num_rounds=3", f"resume={tmp_path / 'ck'}"]))
    run(InProcessGrid(client_app, 4), resumed)
    client = MlflowClient(resolve_tracking_uri())
    (found,) = _runs(client)
    assert [m.step for m in client.get_metric_history(found.info.run_id, "time/round_s")] == [
        1,
        2,
        3,
    ]


def test_tampered_checkpoint_is_refused_before_anything_runs(tmp_path):
    overrides = _crash_after_round_two(tmp_path)
    model = tmp_path / "ck" / "round-000002" / "model.npz"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="tampered"):
        run(
            InProcessGrid(client_app, 4),
            build(compose_experiment([*overrides, f"resume={tmp_path / 'ck'}"])),
        )
    (tmp_path / "ck" / "round-000002" / "manifest.sig").unlink()
    with pytest.raises(ConfigError, match="unsigned"):
        run(
            InProcessGrid(client_app, 4),
            build(compose_experiment([*overrides, f"resume={tmp_path / 'ck'}"])),
        )


def test_resume_refuses_a_changed_config_and_points_to_rollback(tmp_path):
    overrides = _crash_after_round_two(tmp_path)
    changed = build(compose_experiment([*overrides, "lr=0.5", f"resume={tmp_path / 'ck'}"]))
    with pytest.raises(ConfigError, match=r"lr: 0.05 -> 0.5.*rollback_from"):
        run(InProcessGrid(client_app, 4), changed)
    other_model = build(compose_experiment([*overrides, "model=cnn", f"resume={tmp_path / 'ck'}"]))
    with pytest.raises(ConfigError, match="another schema"):
        run(InProcessGrid(client_app, 4), other_model)
    done = build(compose_experiment([*overrides, "num_rounds=2", f"resume={tmp_path / 'ck'}"]))
    with pytest.raises(ConfigError, match="nothing left to run"):
        run(InProcessGrid(client_app, 4), done)


def test_rollback_starts_a_new_run_from_an_earlier_model_and_keeps_the_privacy_spend(tmp_path):
    dp = [
        "privacy=client_level",
        "privacy.noise_multiplier=0.5",
        "privacy.sample_rate=1.0",
        "privacy.target_epsilon=null",
        "fraction_train=1.0",
    ]
    overrides = [*BASE, "num_rounds=3", f"checkpoint.dir={tmp_path / 'ck'}", *dp]
    first = build(compose_experiment(overrides))
    run(InProcessGrid(client_app, 4), first)
    assert len(first.strategy.privacy.ledger.rounds) == 3

    rolled = build(
        compose_experiment(
            [
                *overrides,
                f"checkpoint.dir={tmp_path / 'ck2'}",
                f"rollback_from={tmp_path / 'ck'}",
                "rollback_round=1",
                "lr=0.02",
            ]
        )
    )
    run(InProcessGrid(client_app, 4), rolled)
    client = MlflowClient(resolve_tracking_uri())
    original, new = _runs(client)
    assert new.data.tags["rollback.round"] == "1" and new.data.tags["rollback.from"].endswith(
        "round-000001"
    )
    steps = [m.step for m in client.get_metric_history(new.info.run_id, "time/round_s")]
    assert steps == [2, 3]
    assert new.data.params["lr"] == "0.02"
    # privacy spent is never rolled back: 3 rounds + 2 new ones in one ledger
    assert len(rolled.strategy.privacy.ledger.rounds) == 5
    assert (
        new.data.metrics["dp/epsilon_client_level"]
        > original.data.metrics["dp/epsilon_client_level"]
    )


def test_final_and_best_models_are_registered_with_checkpoint_signatures(tmp_path):
    # lr high enough that the last round is not the best one is not guaranteed; check both cases
    built = build(compose_experiment([*BASE, "num_rounds=3", f"checkpoint.dir={tmp_path / 'ck'}"]))
    run(InProcessGrid(client_app, 4), built)
    client = MlflowClient(resolve_tracking_uri())
    name = "fl-ext-digits-mlp"
    final = client.get_model_version_by_alias(name, "final")
    best = client.get_model_version_by_alias(name, "best")
    store = _store(tmp_path)
    assert final.tags["checkpoint_signature"] == store.load(3).signature
    assert final.tags["stage"] == "final" and final.tags["round"] == "3"
    best_round = max(built.history, key=built.history.get)
    assert best.tags["round"] == str(best_round)
    for version in {final.version, best.version}:
        model = mlflow.pyfunc.load_model(client.get_model_version_download_uri(name, version))
        logits = model.predict(built.split.test.x[:50])
        assert logits.shape == (50, built.split.num_classes)


def test_restart_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint\.keep_last"):
        compose_experiment([*BASE, "checkpoint.keep_last=0"])
    with pytest.raises(ConfigError, match="rollback_round"):
        compose_experiment([*BASE, "rollback_round=-1"])
    with pytest.raises(ConfigError, match=r"checkpoint\.enabled=true"):
        compose_experiment([*BASE, "resume=/x", "checkpoint.enabled=false"])
    both = build(compose_experiment([*BASE, f"resume={tmp_path}", f"rollback_from={tmp_path}"]))
    with pytest.raises(ConfigError, match="exclude each other"):
        run(InProcessGrid(client_app, 4), both)
    missing = build(compose_experiment([*BASE, f"resume={tmp_path / 'nope'}"]))
    with pytest.raises(ConfigError, match="does not exist"):
        run(InProcessGrid(client_app, 4), missing)
    round_dir = tmp_path / "run" / "round-000002"
    round_dir.mkdir(parents=True)
    for key, hint in (
        ("resume", f"resume={tmp_path / 'run'}$"),
        ("rollback_from", f"rollback_from={tmp_path / 'run'} rollback_round=2$"),
    ):
        one_round = build(compose_experiment([*BASE, f"{key}={round_dir}"]))
        with pytest.raises(ConfigError, match="is one round's checkpoint") as err:
            run(InProcessGrid(client_app, 4), one_round)
        assert re.search(hint, str(err.value)), str(err.value)


def test_when_an_earlier_round_was_best_it_is_registered_as_its_own_version(tmp_path, monkeypatch):
    import simulations.central_eval as central_eval

    accuracies = iter([0.1, 0.5, 0.9, 0.3])  # rounds 0..3: round 2 is the best
    real = central_eval.evaluate
    monkeypatch.setattr(
        central_eval, "evaluate", lambda model, data: (real(model, data)[0], next(accuracies))
    )
    built = build(compose_experiment([*BASE, "num_rounds=3", f"checkpoint.dir={tmp_path / 'ck'}"]))
    run(InProcessGrid(client_app, 4), built)
    client = MlflowClient(resolve_tracking_uri())
    name = "fl-ext-digits-mlp"
    final = client.get_model_version_by_alias(name, "final")
    best = client.get_model_version_by_alias(name, "best")
    assert final.version != best.version
    assert best.tags["stage"] == "best" and best.tags["round"] == "2"
    assert best.tags["best_test_accuracy"] == "0.9000"
    store = _store(tmp_path)
    assert best.tags["checkpoint_signature"] == store.load(2).signature
    net = mlflow.pytorch.load_model(client.get_model_version_download_uri(name, best.version))
    expected = store.load(2).arrays
    assert list(net.state_dict()) == list(expected)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), expected[k])


def test_fedbuff_killed_mid_run_resumes_at_its_last_version_on_the_same_clock(tmp_path):
    fedbuff = ["driver=fedbuff", "driver.concurrency=3", "driver.buffer_size=2", "network=mixed",
               "num_rounds=6", "fraction_evaluate=0"]  # fmt: skip
    overrides = [*BASE, f"checkpoint.dir={tmp_path / 'ck'}", *fedbuff]
    with pytest.raises(ConnectionError):  # the 6th batch of jobs: a few versions are saved
        run(CrashAtRound(client_app, 4, crash_round=6), build(compose_experiment(overrides)))
    store = _store(tmp_path)
    saved = store.rounds()
    assert saved == list(range(1, len(saved) + 1)) and 1 <= len(saved) < 6
    resumed = build(compose_experiment([*overrides, f"resume={tmp_path / 'ck'}"]))
    run(InProcessGrid(client_app, 4), resumed)
    assert store.rounds() == [1, 2, 3, 4, 5, 6]
    client = MlflowClient(resolve_tracking_uri())
    (found,) = _runs(client)
    assert found.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "accuracy/test")]
    assert steps == [0, 1, 2, 3, 4, 5, 6]  # the versions continue: no duplicate, no gap
    clock = [m.value for m in client.get_metric_history(found.info.run_id, "time/sim_s")]
    assert len(clock) == 6 and all(b > a for a, b in itertools.pairwise(clock))
    jobs = [m.value for m in client.get_metric_history(found.info.run_id, "other/async_jobs")]
    assert all(b > a for a, b in itertools.pairwise(jobs))  # counters restored
