"""Registry aliases mean what they say (real MLflow registry in sqlite, in-process grid).

``@best`` only moves to a clean version that beats it on the same data and held-out split;
``@final`` is the newest clean run's final model; a simulated attack registers without an
alias; a run that aggregated nothing registers nothing.
"""

from mlflow.tracking import MlflowClient

from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = ["dataset=digits", "model=mlp", "fraction_evaluate=0.0", "local_epochs=1"]
NAME = "fl-ext-digits-mlp"
WEAK = ["num_rounds=1", "lr=0.0005", "momentum=0.0"]  # barely moves from the initial model
GOOD = ["num_rounds=3"]


def _run(overrides, nodes=4):
    built = build(compose_experiment([*BASE, *overrides]))
    run(InProcessGrid(client_app, nodes), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (latest,) = client.search_runs([exp.experiment_id], order_by=["start_time DESC"], max_results=1)
    return built, client, latest


def _alias(client, alias):
    return client.get_model_version_by_alias(NAME, alias)


def _version_of(client, run_id):
    """The one version a run registered (search results do not carry aliases: get it)."""
    (found,) = client.search_model_versions(f"name = '{NAME}' and run_id = '{run_id}'")
    return client.get_model_version(NAME, found.version)


def test_best_moves_only_to_a_better_clean_model_on_the_same_split():
    weak, client, _ = _run(WEAK)
    first = _alias(client, "best")
    assert _alias(client, "final").version == first.version  # one round: final is best
    assert first.tags["test_split_hash"] and first.tags["simulated_attack"] == "false"

    good, _, good_run = _run(GOOD)
    assert max(good.history.values()) > max(weak.history.values())  # precondition
    best = _alias(client, "best")
    assert best.version != first.version
    assert float(best.tags["test_accuracy"]) == max(good.history[r] for r in (1, 2, 3))
    assert "beats @best" in good_run.data.tags["registry.best"]

    # a weaker clean run takes @final (the newest clean final model), never @best
    _, _, weak_run = _run(WEAK)
    final = _alias(client, "final")
    assert final.run_id == weak_run.info.run_id and final.tags["stage"] == "final"
    assert _alias(client, "best").version == best.version
    assert "does not beat" in weak_run.data.tags["registry.best"]
    assert _version_of(client, weak_run.info.run_id).aliases == ["final"]


def test_an_attacked_run_registers_without_any_alias():
    _, client, clean_run = _run(WEAK)
    clean = _alias(client, "best")
    # a far better model, but trained under a simulated attack: it must not take an alias
    attacked, _, attacked_run = _run(
        [*GOOD, "attack=sign_flip", "attack.num_byzantine=1", "aggregator=median"], nodes=5
    )
    assert max(attacked.history.values()) > float(clean.tags["test_accuracy"])  # precondition
    assert _alias(client, "best").version == clean.version
    assert _alias(client, "final").version == clean.version
    version = _version_of(client, attacked_run.info.run_id)
    assert version.aliases == []
    assert version.tags["attack"] == "sign_flip" and version.tags["simulated_attack"] == "true"
    assert clean_run.info.run_id != attacked_run.info.run_id


def test_a_clean_run_takes_best_from_an_attacked_or_unrecorded_version():
    # a @best left by an older registry rule on an attacked model does not defend it
    _run([*GOOD, "attack=sign_flip", "attack.num_byzantine=1", "aggregator=median"], nodes=5)
    client = MlflowClient(resolve_tracking_uri())
    (attacked,) = client.search_model_versions(f"name = '{NAME}'")
    client.set_registered_model_alias(NAME, "best", attacked.version)
    _, _, weak_run = _run(WEAK)
    best = _alias(client, "best")
    assert best.run_id == weak_run.info.run_id
    assert "does not defend it" in weak_run.data.tags["registry.best"]


def test_best_on_another_held_out_split_is_not_comparable_and_stays():
    _run(WEAK)
    client = MlflowClient(resolve_tracking_uri())
    best = _alias(client, "best")
    other, _, other_run = _run([*GOOD, "dataset.test_fraction=0.3"])
    assert max(other.history.values()) > float(best.tags["test_accuracy"])  # better, elsewhere
    assert _alias(client, "best").version == best.version
    assert "not comparable" in other_run.data.tags["registry.best"]
    final = _alias(client, "final")
    assert final.run_id == other_run.info.run_id
    assert final.tags["test_split_hash"] != best.tags["test_split_hash"]
    assert "0.3" in final.tags["test_split"]


def test_a_run_that_aggregated_nothing_registers_nothing():
    # a deadline nobody meets: every round is skipped, the model is the initial one
    built, client, found = _run(
        ["num_rounds=2", "network=mobile", "network.deadline_s=0.001"], nodes=6
    )
    assert built.history[2] == built.history[0]
    assert found.info.status == "FINISHED"
    assert found.data.tags["registered_version"] == "none"
    assert "no round aggregated" in found.data.tags["registry.skipped"]
    assert client.search_model_versions(f"name = '{NAME}'") == []
