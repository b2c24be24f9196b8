"""Telemetry and quarantine through the real engine on the in-process grid."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run
from strategies.governance import Quarantine

BASE = [
    "dataset=digits", "model=mlp", "num_rounds=4", "fraction_evaluate=0", "local_epochs=1",
    "min_train_nodes=5", "min_available_nodes=5",
]  # fmt: skip


def quarantine_of(built):
    return next(s for s in built.strategy.stages if isinstance(s, Quarantine))


@pytest.mark.parametrize("attack", ["sign_flip", "gaussian"])
def test_byzantine_nodes_are_quarantined_and_honest_ones_kept(attack):
    built = build(
        compose_experiment(
            [*BASE, f"attack={attack}", "attack.num_byzantine=3", "quarantine.enabled=true",
             "telemetry.enabled=true", "tracking=none", "checkpoint.enabled=false"]
        )
    )  # fmt: skip
    run(InProcessGrid(client_app, 13), built)
    byz = built.strategy.byzantine.byzantine
    stage = quarantine_of(built)
    quarantined = {d.node for d in stage.decisions() if d.action in ("quarantine", "suspend")}
    assert byz <= quarantined  # every attacker caught
    assert not (quarantined - byz)  # no honest node
    first = min(d.round for d in stage.decisions() if d.node in byz)
    assert first <= 2
    assert built.history[4] > built.history[0] + 0.15  # mean aggregation, attackers out: it learns


def test_telemetry_and_audit_are_tracked_and_a_resume_keeps_the_quarantine(tmp_path):
    overrides = [*BASE, "attack=sign_flip", "attack.num_byzantine=2", "quarantine.enabled=true",
                 "telemetry.enabled=true", "telemetry.pca_every=2", "num_rounds=2"]  # fmt: skip
    built = build(compose_experiment(overrides))
    run(InProcessGrid(client_app, 8), built)
    client = MlflowClient(resolve_tracking_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("fl-ext").experiment_id])
    run_id = found.info.run_id
    names = {f.path for f in client.list_artifacts(run_id, "telemetry")}
    assert {"telemetry/telemetry.jsonl", "telemetry/pca_round_0002.png"} <= names
    lines = open(client.download_artifacts(run_id, "telemetry/telemetry.jsonl")).read().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["round"] for r in rows] == [1, 2] and len(rows[0]["nodes"]) == 8
    assert {"norm", "cos_to_aggregate", "dist_to_center", "bytes", "reply_s", "byzantine"} <= set(
        rows[0]["nodes"][0]
    )
    audit = open(client.download_artifacts(run_id, "governance/audit.jsonl")).read().splitlines()
    assert audit and all(json.loads(a)["action"] for a in audit)
    metrics = found.data.metrics
    assert metrics["clients/quarantined"] >= 2 and "telemetry/cos_gap_max" in metrics
    assert "telemetry/reply_s_p90" in metrics

    ckpt = found.data.tags["checkpoint.dir"]
    resumed = build(compose_experiment([*overrides, "num_rounds=3", f"resume={ckpt}"]))
    stage = quarantine_of(resumed)
    run(InProcessGrid(client_app, 8), resumed)
    byz = resumed.strategy.byzantine.byzantine
    assert all(stage.policy.state(n) in ("quarantined", "suspended") for n in byz)
    assert len(stage.audit) >= len(audit)  # the audit log goes on, nothing lost
    mlflow.end_run()
