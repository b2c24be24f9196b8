"""A real deployment on loopback: SuperLink with TLS and SuperNode authentication, 2 SuperNodes.

Everything here is a real Flower process (flower-superlink, flower-supernode, flwr CLI, the
ServerApp and ClientApp processes they start) with the certificates and keys our ``keys``
command writes. Every process is started by the fixture and stopped by PID.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fl_ext.security import DeploymentMaterial, generate_material
from simulations.deployment import CONNECTION, LocalDeployment
from simulations.flwr_cli import run_app, run_status
from simulations.local_superlink import QUIET_ENV, flwr_bin, stop_process_group, wait_until

pytestmark = pytest.mark.slow

QUICK = ["dataset=digits", "model=mlp", "local_epochs=1", "fraction_evaluate=0", "seed=1"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    material = generate_material(root / "material", hosts=["127.0.0.1"], num_nodes=3)
    homes = {
        "FL_EXT_HOME": str(root / "fl-ext-home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'fl-ext-home' / 'mlflow.db'}",  # what we read
    }
    with LocalDeployment(root / "flwr-home", material, num_nodes=2, extra_env=homes) as started:
        yield started


def _mlflow(deployment):
    return MlflowClient(f"sqlite:///{deployment.env['FL_EXT_HOME']}/mlflow.db")


def _runs(deployment, experiment):
    client = _mlflow(deployment)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def _run_in_background(deployment, overrides):
    """``flwr run`` on the deployment in a thread; its outcome lands in the dict as ``run``."""
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            run=run_app(
                deployment, overrides, connection=CONNECTION, num_supernodes=None, timeout=600
            )
        )
    )
    thread.start()
    return thread, outcome


def _exits_refused(process, timeout=60):
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return code


def test_an_unregistered_supernode_is_refused(deployment):
    before = {n["node-id"] for n in deployment.nodes()}
    rogue = deployment.start_supernode(
        2, partition_id=0, key=deployment.material.node_key(2), max_retries=1
    )
    # a wait on a process that exits fails at once, with the exit code and its log's reason
    with pytest.raises(RuntimeError, match="flower-supernode exited with code") as failed:
        deployment.wait_for(lambda: False, "the rogue SuperNode online", timeout=300, watch=[rogue])
    assert "supernode-2.log" in str(failed.value)
    assert "Failed to activate SuperNode" in str(failed.value) or "could not" in str(failed.value)
    assert _exits_refused(rogue) != 0
    log = (deployment.flwr_home / "supernode-2.log").read_text()
    assert "Failed to activate SuperNode" in log or "could not establish" in log
    assert {n["node-id"] for n in deployment.nodes()} == before
    # a timeout quotes every log of the deployment
    with pytest.raises(TimeoutError, match="not ready after 0s") as late:
        deployment.wait_for(lambda: False, "something", timeout=0.1)
    assert "superlink.log:" in str(late.value) and "supernode-1.log:" in str(late.value)


def test_a_plaintext_supernode_is_refused_by_the_tls_superlink(deployment):
    plain = deployment.start_supernode(3, partition_id=0, insecure=True, max_retries=1)
    assert _exits_refused(plain) != 0
    assert (
        "Failed to initialize the connection"
        in (deployment.flwr_home / "supernode-3.log").read_text()
    )


def test_a_plaintext_cli_connection_is_refused(deployment, tmp_path):
    home = tmp_path / "plain-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "plain"\n\n[superlink.plain]\naddress = "{deployment.address}"\n'
        "insecure = true\n"
    )
    result = subprocess.run(
        [flwr_bin("flwr"), "ls", "plain", "--format", "json"],
        env={**deployment.env, "FLWR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert '"success": true' not in result.stdout


def test_two_supernodes_train_over_tls_killed_after_round_two_and_resumed(deployment, tmp_path):
    """Training over TLS with node authentication, stopped with `flwr stop`, resumed."""
    nodes = deployment.nodes()
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(deployment.node_ids)
    assert all(n["status"] == "online" for n in nodes)
    checkpoints = tmp_path / "ck"
    overrides = [
        *QUICK,
        "num_rounds=4",
        "tracking.experiment=resume",
        f"checkpoint.dir={checkpoints}",
    ]
    first, outcome = _run_in_background(deployment, overrides)
    wait_until((checkpoints / "round-000002").is_dir, 300, "checkpoint of round 2")
    listed = json.loads(deployment.flwr(["ls", CONNECTION]).stdout)["runs"]
    run_id = max(listed, key=lambda r: r["pending-at"])["run-id"]
    stopped = deployment.flwr(["stop", str(run_id), CONNECTION])
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    first.join(120)
    assert not first.is_alive()
    assert not outcome["run"].ok
    client, (stopped_run,) = _runs(deployment, "resume")
    wait_until(
        lambda: client.get_run(stopped_run.info.run_id).info.status != "RUNNING",
        120,
        "the stopped run closed",
    )
    stopped_run = client.get_run(stopped_run.info.run_id)  # ended as stopped, not as a failure
    assert stopped_run.info.status == "KILLED", stopped_run.data.tags
    assert "stopped on the SuperLink" in stopped_run.data.tags["stopped"]
    done = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("round-"))
    assert done[:2] == ["round-000001", "round-000002"] and len(done) <= 3

    resumed = run_app(
        deployment,
        [*overrides, f"resume={checkpoints}"],
        connection=CONNECTION,
        num_supernodes=None,
        timeout=600,
    )
    assert resumed.ok, resumed.output[-3000:]
    assert run_status(deployment, resumed.run_id, CONNECTION) == "finished:completed"
    client, (found,) = _runs(deployment, "resume")  # one MLflow run across both ServerApps
    assert found.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "time/round_s")]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("round-")) == [
        f"round-00000{r}" for r in range(1, 5)
    ]
    assert found.data.tags["num_clients"] == "2" and found.data.metrics["clients/replied"] == 2
    acc = [m.value for m in client.get_metric_history(found.info.run_id, "accuracy/test")]
    assert len(acc) == 5 and acc[-1] > acc[0] + 0.3
    assert found.data.metrics["time/train_reply_s_max"] > 0  # measured push-to-pull times


README_HOSTS = ["superlink.lan", "10.0.0.5"]  # the README's `keys` example: a SuperLink elsewhere


def test_material_without_the_loopback_names_fails_at_once_with_the_tls_reason(tmp_path):
    material = generate_material(tmp_path / "m", hosts=README_HOSTS, num_nodes=2, loopback=False)
    deployment = LocalDeployment(tmp_path / "home", material, num_nodes=2)
    with pytest.raises(RuntimeError, match=r"not valid for '127\.0\.0\.1'") as failed:
        deployment.start()  # was: "not ready after 90s" and nothing else
    assert "superlink.lan, 10.0.0.5" in str(failed.value)
    assert deployment.superlink is None and deployment.supernodes == []  # all stopped


def _deploy(args, env, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "simulations.deploy", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_readme_commands_twice_in_a_row_keys_outside_the_repository(tmp_path):
    home = tmp_path / "fl-ext-home"
    env = {
        **os.environ,
        **QUIET_ENV,
        "FL_EXT_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    keys = _deploy(["keys", *(f"--host={h}" for h in README_HOSTS), "--nodes", "2"], env)
    assert keys.returncode == 0, keys.stdout + keys.stderr
    material = DeploymentMaterial(home / "deploy")  # the default: $FL_EXT_HOME/deploy
    assert material.num_nodes() == 2
    assert material.server_hosts() == [*README_HOSTS, "localhost", "127.0.0.1", "::1"]
    for attempt in (1, 2):  # the second run used to fail with "Public key already in use"
        ran = _deploy(
            ["run", "--nodes", "2", "--", *QUICK, "num_rounds=1", "tracking.experiment=twice"], env
        )
        assert ran.returncode == 0, (attempt, (ran.stdout + ran.stderr)[-3000:])
        assert "finished:completed" in ran.stdout
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("twice").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]


def _driver_state(checkpoints, version):
    state = json.loads((checkpoints / f"round-{version:06d}" / "state.json").read_text())
    return state["strategy"]["driver"]


def _versions(checkpoints):
    return sorted(int(p.name[6:]) for p in checkpoints.glob("round-*") if p.is_dir())


def test_fedbuff_keeps_fast_nodes_busy_and_survives_a_supernode_restart(deployment, tmp_path):
    """3 SuperNodes, one 30 s slower per job (several times a fast job, even on a loaded
    machine); a fast one killed mid-run and restarted. Last in the module: it adds a third
    SuperNode to the shared deployment.
    """
    deployment.register(deployment.material.node_public_key(2))
    deployment.supernodes.append(
        deployment.start_supernode(2, partition_id=1, node_config="train-delay-s=30")
    )
    deployment.wait_for(lambda: deployment.online_count() >= 3, "3 SuperNodes online", poll=0.5)
    slow_id = next(
        int(n["node-id"])
        for n in deployment.nodes()
        if int(n["node-id"]) not in deployment.node_ids
    )
    checkpoints = tmp_path / "ck"
    versions = 6
    overrides = [
        *QUICK, "driver=fedbuff", "driver.concurrency=3", "driver.buffer_size=2",
        f"num_rounds={versions}", "min_available_nodes=3", "min_train_nodes=2",
        "driver.job_timeout_s=120", "driver.backoff_s=0.5", "driver.cooldown_s=2",
        "driver.drain=discard", "tracking.experiment=fedbuff-deploy",
        f"checkpoint.dir={checkpoints}",
    ]  # fmt: skip
    run, outcome = _run_in_background(deployment, overrides)
    wait_until(lambda: len(_versions(checkpoints)) >= 2, 300, "FedBuff version 2")
    killed_at = _versions(checkpoints)[-1]
    fast, other = deployment.node_ids[1], deployment.node_ids[0]
    jobs_before = _driver_state(checkpoints, killed_at)["per_node"].get(str(fast), [0, 0])[0]
    stop_process_group(deployment.supernodes[1])  # a fast SuperNode's process dies
    # nothing stalls: the others keep making versions while it is gone
    wait_until(lambda: _versions(checkpoints)[-1] >= killed_at + 2, 300, "versions while down")
    deployment.supernodes[1] = deployment.start_supernode(1, partition_id=1)
    run.join(400)
    assert not run.is_alive()
    result = outcome["run"]
    assert result.ok, result.output[-3000:]
    assert run_status(deployment, result.run_id, CONNECTION) == "finished:completed"
    assert _versions(checkpoints) == list(range(1, versions + 1))
    per_node = {int(k): v for k, v in _driver_state(checkpoints, versions)["per_node"].items()}
    assert set(per_node) == {*deployment.node_ids, slow_id}
    # the fast node never waited for the slow one: several jobs per slow job
    assert per_node[other][0] >= 2 * per_node[slow_id][0], per_node
    assert per_node[fast][0] > jobs_before  # the restarted node trained again
    assert sum(used for _, used in per_node.values()) == 2 * versions  # buffer bookkeeping
    client, (found,) = _runs(deployment, "fedbuff-deploy")
    assert found.info.status == "FINISHED"
    assert found.data.metrics["other/async_rejected"] == 0, found.data.metrics
    acc = [m.value for m in client.get_metric_history(found.info.run_id, "accuracy/test")]
    assert acc[-1] > acc[0] + 0.2
