"""Hydra multirun sweep: every combination runs as a real Flower simulation (``flwr run``).

    python -m simulations.sweep -m strategy=fedavg,fedprox seed=0,1

All runs go to one MLflow experiment (``sweep.experiment``); at the end the comparison table
is printed and the accuracy-vs-round plot written (see simulations.compare).
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fl_ext.tracking import fl_ext_home
from simulations.compare import compare
from simulations.flwr_cli import run_app
from simulations.follow import PROGRESS, Follower
from simulations.local_superlink import LocalSuperLink
from simulations.run import precheck

log = logging.getLogger(__name__)
_LINK: LocalSuperLink | None = None
_SWEEP_ONLY = ("sweep.",)
# One name for every job and the end callback, even though `python -m` imports this module
# twice (as __main__ and as simulations.sweep for the callback).
_STARTED = os.environ.setdefault("FL_EXT_SWEEP_STARTED", time.strftime("%Y%m%d-%H%M%S"))


def sweep_experiment(cfg: DictConfig) -> str:
    """MLflow experiment of this sweep: ``sweep.experiment`` or sweep-<start time>."""
    return str(cfg.sweep.experiment or f"sweep-{_STARTED}")


def superlink() -> LocalSuperLink:
    """One SuperLink for the whole sweep, stopped when the process exits."""
    global _LINK  # noqa: PLW0603
    if _LINK is None:
        _LINK = LocalSuperLink(fl_ext_home() / "sweep-flwr-home").start()
        atexit.register(_LINK.stop)
    return _LINK


def job_overrides(task_overrides: list[str], experiment: str) -> list[str]:
    """The job's overrides for the ServerApp, with the sweep's MLflow experiment."""
    kept = [o for o in task_overrides if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
    if not any(o.startswith("tracking.experiment=") for o in kept):
        kept.append(f"tracking.experiment={experiment}")
    return kept


@hydra.main(config_path="../conf", config_name="sweep", version_base=None)
def main(cfg: DictConfig) -> dict[str, Any]:
    """Run one combination with ``flwr run`` and report how it ended."""
    overrides = job_overrides(list(HydraConfig.get().overrides.task), sweep_experiment(cfg))
    num_nodes = int(cfg.sweep.num_supernodes)
    precheck(overrides, num_nodes)  # a ConfigError stops the sweep here, not in the ServerApp
    log.info("flwr run with overrides: %s", " ".join(overrides))
    job = HydraConfig.get().job.num
    follower = Follower(
        write=lambda line: print(line, flush=True), prefix=f"[job {job}] ", only=PROGRESS
    )
    outcome = run_app(
        superlink(),
        overrides,
        num_supernodes=num_nodes,
        cpus_per_client=cfg.sweep.cpus_per_client,
        on_line=follower,
    )
    if not outcome.ok:
        log.error("run %s ended %s: %s", outcome.run_id, outcome.status, follower.reason)
    else:
        log.info("run %s ended %s", outcome.run_id, outcome.status)
    return {"run_id": outcome.run_id, "status": outcome.status, "reason": follower.reason}


class CompareAtEnd(Callback):
    """Print the comparison table and write the plot when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        experiment = sweep_experiment(config)
        out = Path(config.hydra.sweep.dir) / "accuracy.png"
        rows, table, plot = compare(experiment, uri=config.tracking.get("uri"), out=out)
        print(f"\nMLflow experiment '{experiment}':\n{table}\n\naccuracy plot: {plot}", flush=True)
        failed = [r.name for r in rows if r.status != "FINISHED"]
        if failed:
            raise SystemExit(f"{len(failed)} of {len(rows)} runs did not finish: {failed}")


if __name__ == "__main__":
    main()
