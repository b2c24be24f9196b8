"""Robustness matrix: every rule (with and without NNM) x every attack x data scenario.

    python -m simulations.robustness                      # the whole matrix (Hydra multirun)
    python -m simulations.robustness +scenario=iid attack=none,alie  # a slice (CLI sweeps win)
    python -m simulations.robustness --report [experiment] # table + heatmap from MLflow

Each job runs the experiment on the in-process driver (:class:`InProcessGrid`: the same
strategy, ClientApp and aggregation code as ``flwr run``, without Ray; a test checks it
reproduces a ``flwr run`` for one configuration and seed) and records an MLflow run. A rule
that cannot aggregate the federation (Bulyan needs n >= 4f + 3) is recorded as infeasible.
At the end a markdown table (rows: rule, columns: attacks, plus the worst case over attacks)
and a heatmap PNG are written per scenario.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from fl_ext.tracking import Tracker, metric_key, resolve_tracking_uri
from simulations.build import build, check_aggregation
from simulations.client_app import app as client_app
from simulations.config import GROUPS, ConfigError, Experiment, check_config
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

log = logging.getLogger(__name__)
ATTACK_ORDER = [
    "none",
    "sign_flip",
    "gaussian",
    "ipm",
    "alie",
    "mimic",
    "ipm_opt",
    "alie_opt",
    "label_flip",
]
INFEASIBLE_TAG = "robustness.infeasible"
Cells = dict[tuple[str, str], dict[str, float | str]]


def experiment_from_job(cfg: DictConfig) -> Experiment:
    """The job's composed config as an :class:`Experiment` (no second Hydra composition)."""
    choices_cfg = HydraConfig.get().runtime.choices
    choices = {g: str(choices_cfg.get(g)) for g in GROUPS}
    preagg = list((cfg.get("preagg") or {}).keys())
    choices["preagg"] = "+".join(preagg) if preagg else "none"
    choices["scenario"] = str(choices_cfg.get("scenario", "default"))
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("robustness", None)
    experiment = Experiment(cfg=OmegaConf.create(plain), choices=choices)
    check_config(experiment.cfg)
    return experiment


@hydra.main(config_path="../conf", config_name="robustness", version_base=None)
def main(cfg: DictConfig) -> dict[str, Any]:
    """One cell of the matrix."""
    experiment = experiment_from_job(cfg)
    built = build(experiment)
    nodes = int(cfg.robustness.num_nodes)
    try:
        check_aggregation(built, nodes)
    except ConfigError as err:
        _record_infeasible(built.tracker, experiment, str(err))
        log.warning("infeasible: %s", err)
        return {"status": "infeasible"}
    run(InProcessGrid(client_app, nodes), built)
    final = built.history[max(built.history)]
    log.info("%s: final test accuracy %.4f", experiment.choices, final)
    return {"status": "finished", "accuracy": final}


def _record_infeasible(tracker: Tracker, experiment: Experiment, reason: str) -> None:
    tags = {f"choice.{k}": v for k, v in experiment.choices.items()}
    tracker.start(run_name="infeasible", params={}, tags={**tags, INFEASIBLE_TAG: reason[:5000]})
    tracker.end("FINISHED")


def collect(
    experiment: str, uri: str | None = None
) -> dict[str, dict[tuple[str, str], dict[str, float | str]]]:
    """``{scenario: {(rule, attack): final accuracy or 'n/a'}}`` from the MLflow runs."""
    client = MlflowClient(resolve_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment '{experiment}' at {resolve_tracking_uri(uri)}")
    cells: dict[str, Cells] = defaultdict(dict)
    runs = client.search_runs(
        [exp.experiment_id], max_results=5000, order_by=["attributes.start_time ASC"]
    )
    for r in runs:  # oldest first: a cell that was run again shows its newest result
        t = r.data.tags
        rule = t.get("choice.aggregator", "?") + (
            "+" + t["choice.preagg"] if t.get("choice.preagg", "none") != "none" else ""
        )
        key = (rule, t.get("choice.attack", "?"))
        scenario = t.get("choice.scenario", "default")
        if INFEASIBLE_TAG in t:
            cells[scenario][key] = {"acc": "n/a"}
        elif r.info.status == "FINISHED" and metric_key("test_accuracy") in r.data.metrics:
            cells[scenario][key] = {"acc": float(r.data.metrics[metric_key("test_accuracy")])}
    return cells


def markdown(scenario: str, cells: Cells) -> str:
    """Rows: rules; columns: attacks present; last column: worst case over the attacks."""
    attacks = [a for a in ATTACK_ORDER if any(k[1] == a for k in cells)]
    rules = sorted({k[0] for k in cells})
    lines = [
        f"**{scenario}**",
        "",
        "| rule | " + " | ".join(attacks) + " | worst |",
        "|---" * (len(attacks) + 2) + "|",
    ]
    for rule in rules:
        values = [cells.get((rule, a), {}).get("acc", "") for a in attacks]
        numbers = [v for v in values if isinstance(v, float)]
        worst = f"{min(numbers):.3f}" if numbers and len(numbers) == len(values) else "n/a"
        shown = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in values]
        lines.append(f"| {rule} | " + " | ".join(shown) + f" | {worst} |")
    return "\n".join(lines)


def heatmap(all_cells: dict[str, Cells], out: Path) -> Path:
    """One panel per scenario, rule x attack, colour = final accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scenarios = sorted(all_cells)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 6), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        cells = all_cells[scenario]
        attacks = [a for a in ATTACK_ORDER if any(k[1] == a for k in cells)]
        rules = sorted({k[0] for k in cells})
        grid = np.full((len(rules), len(attacks)), np.nan)
        for i, rule in enumerate(rules):
            for j, attack in enumerate(attacks):
                v = cells.get((rule, attack), {}).get("acc")
                if isinstance(v, float):
                    grid[i, j] = v
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(attacks)), attacks, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(rules)), rules, fontsize=8)
        ax.set_title(scenario)
        for i in range(len(rules)):
            for j in range(len(attacks)):
                text = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.6, label="final test accuracy")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def report(experiment: str, out_dir: Path, uri: str | None = None) -> str:
    """Write ``robustness.md`` and ``robustness.png`` to ``out_dir``; return the markdown."""
    cells = collect(experiment, uri)
    text = "\n\n".join(markdown(s, cells[s]) for s in sorted(cells))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "robustness.md").write_text(text + "\n")
    heatmap(cells, out_dir / "robustness.png")
    return text


class ReportAtEnd(Callback):
    """Print and write the matrix when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        text = report(
            str(config.robustness.experiment),
            Path(str(config.robustness.out_dir)),
            config.tracking.get("uri"),
        )
        print(text, flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--report":
        name = sys.argv[2] if len(sys.argv) > 2 else "robustness"
        print(report(name, Path("robustness")))
    else:
        main()
