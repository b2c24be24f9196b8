"""The end of a run: the accuracy plot, the privacy ledger and the model registry.

The final model, and the best one when it earns ``@best``, are logged and registered with
their FL metadata and the signature of the checkpoint they came from.
"""

from __future__ import annotations

import json
import logging
import time

from flwr.serverapp.strategy import Result

import fl_ext
from fl_ext.data.datasets import content_hash
from fl_ext.params import set_weights
from fl_ext.tracking import MlflowTracker
from fl_ext.tracking.plots import accuracy_plot_png
from simulations import naming
from simulations.build import Built
from simulations.checkpointing import RoundSaver
from simulations.config import Experiment
from simulations.data_records import client_data_tag

log = logging.getLogger("fl_ext")


def finish(built: Built, result: Result, *, num_clients: int, saver: RoundSaver) -> None:
    """Plot, log and register the final and the best model with their FL metadata.

    The registry aliases mean what they say (see :func:`_best_verdict`): a run that aggregated
    no client update registers nothing; a run with a simulated attack registers its final
    model without any alias; a clean run's final model takes ``final``, and its best model
    takes ``best`` only if it beats the current ``@best`` on the same data and held-out split
    (one version carries both when the last round was the best). Each version carries the
    signature of the checkpoint it came from.
    """
    exp, cfg, tracker = built.experiment, built.experiment.cfg, built.tracker
    set_weights(built.model, result.arrays.to_numpy_ndarrays())
    final_acc = (
        built.history.get(max(built.history), float("nan")) if built.history else float("nan")
    )
    tracker.log_png(
        accuracy_plot_png({naming.run_name(exp): built.history}, title="Centralized test accuracy"),
        "accuracy.png",
    )
    partition = dict(exp.resolved()["partition"])
    partition.pop("_target_", None)
    fl_tags = {
        "strategy": exp.choices["strategy"],
        "aggregator": exp.choices["aggregator"],
        "preagg": exp.choices["preagg"],
        "attack": exp.choices["attack"],
        "codec": exp.choices["codec"],
        "rounds": str(cfg.num_rounds),
        "num_clients": str(num_clients),
        "dataset": exp.choices["dataset"],
        "dataset_hash": built.split.content_hash,
        "dataset_version": built.split.version,
        "client_data": client_data_tag(built),
        **normalization_tags(built),
        **(
            {"fed_eval_accuracy": repr(built.last_fed_eval)}
            if built.last_fed_eval is not None
            else {}
        ),
        "partition": exp.choices["partition"],
        "partition_params": str(partition),
        "model": exp.choices["model"],
        "final_test_accuracy": f"{final_acc:.4f}",
        "fl_ext_version": fl_ext.__version__,
        **test_split_tags(built),
        "simulated_attack": str(built.strategy.byzantine is not None).lower(),
        **model_variant_tags(exp),
    }
    privacy = built.strategy.privacy
    if privacy is not None:
        ledger = privacy.ledger
        fl_tags.update(
            {
                "privacy": exp.choices["privacy"],
                "dp_delta": f"{ledger.delta:g}",
                "dp_accountant": ledger.accountant,
                **{k: f"{v:.4f}" for k, v in ledger.metrics().items() if k != "dp_delta"},
            }
        )
        tracker.log_text(json.dumps(ledger.to_json(), indent=1), "privacy_ledger.json")
    registered = cfg.tracking.get("registered_model_name") or (
        f"fl-ext-{exp.choices['dataset']}-{exp.choices['model']}"
    )
    started = time.monotonic()
    last_round = (
        saver.last.server_round if saver.last is not None else max(built.history, default=0)
    )
    run_tags = {"final_test_accuracy": f"{final_acc:.4f}"}
    if saver.aggregated_rounds == 0:
        reason = "no round aggregated a client update: the model is the one the run started from"
        log.warning("Model not registered: %s", reason)
        tracker.set_tags({**run_tags, "registered_version": "none", "registry.skipped": reason})
        return
    final_tags = {**fl_tags, "stage": "final", "test_accuracy": repr(float(final_acc))}
    if built.strategy.byzantine is not None or built.stopped is not None:
        why_not = (
            f"simulated attack (attack={exp.choices['attack']})"
            if built.strategy.byzantine is not None
            else f"stopped before its last round ({built.stopped})"
        )
        version = _register(
            built,
            registered,
            {**final_tags, **({"stopped": "true"} if built.stopped else {})},
            server_round=last_round,
            signature=saver.signatures.get(last_round, "none"),
            aliases=(),
        )
        if version is not None:
            log.warning(
                "%s: %s v%s registered with no alias; @final and @best stay where they are",
                why_not[0].upper() + why_not[1:],
                registered,
                version,
            )
        tracker.set_tags({**run_tags, "registered_version": str(version)})
        return
    takes_best, why = _best_verdict(
        built.tracker.alias_tags(registered, "best"), fl_tags, saver.best_accuracy
    )
    best_is_final = saver.best_round in (last_round, -1)
    version = _register(
        built,
        registered,
        final_tags,
        server_round=last_round,
        signature=saver.signatures.get(last_round, "none"),
        aliases=("final", "best") if best_is_final and takes_best else ("final",),
    )
    if version is None:  # tracking=none or tracking.register_model=false: nothing registered
        tracker.set_tags({**run_tags, "registered_version": "none"})
        log.info("Final test accuracy %.4f; model not registered (registry off)", final_acc)
        return
    tracker.set_tags({**run_tags, "registered_version": str(version), "registry.best": why})
    if cfg.get("edge_export") == "int8" and isinstance(tracker, MlflowTracker):
        from simulations.edge_export import register_edge_variant  # onnx only when asked

        edge = register_edge_variant(
            tracker,
            model=built.served_model(),
            split=built.split,
            registered_name=registered,
            source_version=str(version),
            tags=final_tags,
        )
        tracker.set_tags({"edge_version": str(edge)})
    if takes_best and not best_is_final:
        set_weights(built.model, saver.best_arrays)
        best_version = _register(
            built,
            registered,
            {
                **fl_tags,
                "stage": "best",
                "test_accuracy": repr(float(saver.best_accuracy)),  # full precision: compared
                "best_test_accuracy": f"{saver.best_accuracy:.4f}",
            },
            server_round=saver.best_round,
            signature=saver.signatures.get(saver.best_round, "none"),
            aliases=("best",),
            artifact_path="best_model",
        )
        tracker.set_tags({"best_round": str(saver.best_round), "best_version": str(best_version)})
    (log.info if takes_best else log.warning)("Registry @best: %s", why)
    log.info(
        "Final test accuracy %.4f; model logged in %.1fs (registered: %s v%s)",
        final_acc,
        time.monotonic() - started,
        registered,
        version,
    )


def _register(
    built: Built,
    name: str,
    tags: dict[str, str],
    *,
    server_round: int,
    signature: str,
    aliases: tuple[str, ...],
    artifact_path: str = "model",
) -> str | None:
    """Log ``built.model`` (its current weights) and register it with its round and signature."""
    return built.tracker.log_model(
        built.served_model(),  # raw images in: the normalisation (if any) is part of it
        input_example=built.split.test.x[:2],
        registered_name=name,
        tags={**tags, "round": str(server_round), "checkpoint_signature": signature},
        artifact_path=artifact_path,
        aliases=aliases,
    )


def normalization_tags(built: Built) -> dict[str, str]:
    """The federation's statistics the model normalises with (the monitor compares them)."""
    norm = built.normalization
    if norm is None:
        return {}
    return {
        "preprocessing": built.experiment.choices.get("preprocessing", "none"),
        "stats_mean": json.dumps(list(norm.mean)),
        "stats_std": json.dumps(list(norm.std)),
    }


def test_split_tags(built: Built) -> dict[str, str]:
    """What defines the held-out split the accuracies are measured on (registry tags)."""
    spec = dict(built.experiment.resolved()["dataset"])
    spec.pop("_target_", None)
    test = built.split.test
    return {
        "test_split_hash": content_hash(test.x, test.y),
        "test_split": f"{len(test)} examples, {spec}",
    }


def _best_verdict(
    current: dict[str, str] | None, tags: dict[str, str], best_accuracy: float
) -> tuple[bool, str]:
    """Whether this clean run's best model takes ``@best`` from ``current``, and why.

    It does when there is no ``@best`` yet, when the current one cannot defend it (a version
    from a simulated attack, or one registered before the split was recorded), or when it
    beats it strictly on the same dataset (content hash) and the same held-out split (hash of
    the test examples). A ``@best`` measured on other data or another split is not comparable
    and stays.
    """
    if current is None:
        return True, f"first @best ({best_accuracy:.4f})"
    v = current.get("version", "?")
    if current.get("simulated_attack", "false") != "false" or "test_split_hash" not in current:
        return True, (
            f"@best v{v} (attack={current.get('attack', '?')}, registered without a recorded "
            f"clean split) does not defend it: moved ({best_accuracy:.4f})"
        )
    if (current.get("dataset_hash"), current["test_split_hash"]) != (
        tags["dataset_hash"],
        tags["test_split_hash"],
    ):
        return False, (
            f"@best v{v} was measured on another dataset or held-out split "
            f"({current.get('test_split', '?')}): not comparable, it stays; use "
            "tracking.registered_model_name=<name> to keep a @best for this split"
        )
    theirs = float(current.get("test_accuracy", "nan"))
    if best_accuracy > theirs:
        return True, f"{best_accuracy:.4f} beats @best v{v} ({theirs:.4f}): moved"
    return False, f"{best_accuracy:.4f} does not beat @best v{v} ({theirs:.4f}): it stays"


def model_variant_tags(exp: Experiment) -> dict[str, str]:
    """What kind of model a version is: sub-model policy, LoRA mode and backbone."""
    conf, tags = exp.resolved(), dict[str, str]()
    if exp.choices.get("submodel", "none") != "none":
        sub = conf["submodel"]
        tags["submodel"] = f"{sub['policy']} widths {list(sub['widths'])}"
    if exp.choices.get("adapter", "none") != "none":
        lora = conf["adapter"]
        tags["adapter"] = f"lora {lora['mode']} rank {lora['rank']} alpha {lora['alpha']:g}"
        tags["backbone"] = str(lora["backbone"])
    return tags
