"""Compose the experiment config from conf/ plus overrides, and check it before any training.

The run config carries one string, ``overrides``, with Hydra overrides separated by spaces:
``flwr run . --run-config 'overrides="strategy=fedprox partition=dirichlet partition.alpha=0.3"'``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.singleton import Singleton
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simulations import override_check

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = (
    "strategy",
    "aggregator",
    "attack",
    "privacy",
    "codec",
    "selection",
    "network",
    "server_opt",
    "secagg",
    "driver",
    "preprocessing",
    "submodel",
    "adapter",
    "dataset",
    "partition",
    "model",
    "tracking",
)
# groups whose `none` option is `_target_: null` (the component is off)
OPTIONAL_GROUPS = (
    "attack", "privacy", "codec", "network", "server_opt", "secagg", "driver", "preprocessing",
    "submodel", "adapter",
)  # fmt: skip
TASKS = ("train", "statistics", "monitor")


class outside_hydra:  # a context manager, lower case like initialize_config_dir
    """Compose even inside a running Hydra app (a sweep job, the robustness matrix).

    Hydra allows one initialized config search path per process; its state is set aside for
    the composition and put back afterwards.
    """

    def __enter__(self) -> None:
        self._saved = Singleton._instances.pop(GlobalHydra, None)

    def __exit__(self, *_: object) -> None:
        Singleton._instances.pop(GlobalHydra, None)
        if self._saved is not None:
            Singleton._instances[GlobalHydra] = self._saved


class ConfigError(ValueError):
    """The experiment config cannot run; the message says which value and what is allowed."""


@dataclass(frozen=True)
class Experiment:
    """A composed, resolved and checked config plus the option chosen in every group."""

    cfg: DictConfig
    choices: dict[str, str]

    def resolved(self) -> dict[str, Any]:
        """The config as plain containers with interpolations resolved."""
        return OmegaConf.to_container(self.cfg, resolve=True)  # type: ignore[return-value]


def parse_overrides(text: str | None) -> list[str]:
    """Split the run-config string into Hydra overrides (shell quoting rules)."""
    try:
        return shlex.split(text or "")
    except ValueError as err:
        raise ConfigError(f"cannot parse overrides {text!r}: {err}") from err


def compose_experiment(
    overrides: Sequence[str] | str = (), conf_dir: Path = CONF_DIR
) -> Experiment:
    """Compose ``conf/config.yaml`` with ``overrides``; raise :class:`ConfigError` if invalid."""
    if isinstance(overrides, str):
        overrides = parse_overrides(overrides)
    overrides = list(overrides)
    try:
        parsed = override_check.parse(overrides)
        added = [
            o for o in override_check.additions(parsed)
            if not override_check.is_group(conf_dir, o.key_or_group)
        ]  # fmt: skip
        with outside_hydra(), initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            if added:
                base = compose(
                    config_name="config",
                    overrides=[
                        line for line, o in zip(overrides, parsed, strict=True) if o not in added
                    ],
                )
                refused = override_check.check_additions(parsed, base, conf_dir)
                if refused is not None:
                    raise ConfigError(refused)
            full = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        choices = {g: str(full.hydra.runtime.choices[g]) for g in GROUPS}
        preagg = list((full.get("preagg") or {}).keys())  # list groups are not in choices
        choices["preagg"] = "+".join(preagg) if preagg else "none"
        with_hydra = OmegaConf.to_container(full, resolve=False)
        assert isinstance(with_hydra, dict)
        with_hydra.pop("hydra")
        cfg = OmegaConf.create(with_hydra)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        unknown = re.search(r"Could not override '([\w.-]+)'", str(err))
        if unknown and "To append to your config" in str(err):
            key = unknown.group(1)
            value = next(
                (v for k, _, v in (o.partition("=") for o in overrides) if k.lstrip("+~") == key),
                None,
            )
            raise ConfigError(
                f"unknown key {key!r}{override_check.suggestion(key, conf_dir, value)}"
            ) from err
        missing = re.search(r"Could not (?:load|find) '([\w-]+)/([\w-]+)'", str(err))
        if missing:  # one line: Hydra adds its whole config search path
            group, option = missing.groups()
            raise ConfigError(
                f"unknown option {group}={option}. {_available_options(group, conf_dir)}"
            ) from err
        raise ConfigError(f"invalid overrides {list(overrides)}: {err}") from err
    check_config(cfg)
    return Experiment(cfg=cfg, choices=choices)


def _available_options(group: str, conf_dir: Path) -> str:
    """The options of ``group`` (Hydra lists them, but not for list groups such as preagg)."""
    options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    return f"Available options in '{group}': {', '.join(options)}"


def _require(cfg: DictConfig, key: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r} is invalid: must be {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_config(cfg: DictConfig) -> None:
    """Reject impossible federation/training values before anything starts."""
    c = cfg
    _require(c, "num_rounds", _is_int(c.num_rounds) and c.num_rounds >= 1, "an integer >= 1")
    _require(
        c, "fraction_train", _is_num(c.fraction_train) and 0 < c.fraction_train <= 1, "in (0, 1]"
    )
    _require(
        c,
        "fraction_evaluate",
        _is_num(c.fraction_evaluate) and 0 <= c.fraction_evaluate <= 1,
        "in [0, 1]",
    )
    for key in (
        "min_train_nodes",
        "min_evaluate_nodes",
        "min_available_nodes",
        "local_epochs",
        "batch_size",
    ):
        _require(c, key, _is_int(c[key]) and c[key] >= 1, "an integer >= 1")
    _require(
        c,
        "min_available_nodes",
        c.min_available_nodes >= c.min_train_nodes,
        f">= min_train_nodes ({c.min_train_nodes})",
    )
    _require(c, "lr", _is_num(c.lr) and c.lr > 0, "> 0")
    _require(c, "momentum", _is_num(c.momentum) and 0 <= c.momentum < 1, "in [0, 1)")
    _require(
        c,
        "local_test_fraction",
        _is_num(c.local_test_fraction) and 0 <= c.local_test_fraction < 1,
        "in [0, 1)",
    )
    for key in ("round_timeout", "node_wait_timeout"):
        _require(c, key, _is_num(c[key]) and c[key] > 0, "> 0 seconds")
    _require(c, "seed", _is_int(c.seed) and c.seed >= 0, "an integer >= 0")
    _check_restart_keys(c)
    _check_task_keys(c)
    _require(c, "edge_export", c.get("edge_export") in (None, "int8"), "null or int8")
    _require(c, "evaluate_with_train", isinstance(c.evaluate_with_train, bool), "true or false")
    _require(
        c,
        "evaluate_with_train",
        not c.evaluate_with_train or c.local_test_fraction > 0,
        "false when local_test_fraction is 0 (clients have nothing to evaluate on)",
    )
    for group in (g for g in GROUPS if g not in OPTIONAL_GROUPS):
        _require(c, f"{group}._target_", isinstance(c[group].get("_target_"), str), "a class path")
    for group in OPTIONAL_GROUPS:  # null: off (the group's `none`)
        target = c[group].get("_target_")
        ok = target is None or isinstance(target, str)
        _require(c, f"{group}._target_", ok, "a class or function path, or null")
    for name, spec in (c.get("preagg") or {}).items():
        _require(
            c, f"preagg.{name}._target_", isinstance(spec.get("_target_"), str), "a class path"
        )


def _check_task_keys(c: DictConfig) -> None:
    """``task`` and, for ``task=monitor``, the ``monitor`` settings."""
    _require(c, "task", c.get("task") in TASKS, " | ".join(TASKS))
    m = c.get("monitor") or {}
    for key in ("max_drop", "max_stats_drift"):
        value: Any = m.get(key)
        _require(c, f"monitor.{key}", _is_num(value) and float(value) > 0, "> 0")
    hook = m.get("webhook")
    _require(
        c,
        "monitor.webhook",
        hook is None or (isinstance(hook, str) and hook.startswith(("http://", "https://"))),
        "an http(s) URL or null",
    )
    if c.task == "monitor":
        model = m.get("model")
        ok = isinstance(model, str) and ("@" in model or "/" in model)
        _require(c, "monitor.model", ok, "NAME@ALIAS or NAME/VERSION of a registered model")
    if c.task == "statistics" and c.preprocessing.get("_target_") is None:
        raise ConfigError("task=statistics needs preprocessing=federated_stats (its settings)")


def _check_restart_keys(c: DictConfig) -> None:
    """Checkpoint, resume and rollback settings."""
    ck = c.get("checkpoint") or {}
    _require(c, "checkpoint.enabled", isinstance(ck.get("enabled"), bool), "true or false")
    keep = ck.get("keep_last")
    _require(
        c, "checkpoint.keep_last", keep is None or (_is_int(keep) and keep >= 1), ">= 1 or null"
    )
    rnd = c.get("rollback_round")
    _require(
        c, "rollback_round", rnd is None or (_is_int(rnd) and rnd >= 0), "an integer >= 0 or null"
    )
    for key in ("resume", "rollback_from"):
        value = c.get(key)
        _require(
            c, key, value is None or (isinstance(value, str) and value != ""), "a directory or null"
        )
    if c.get("resume") and not ck.get("enabled"):
        raise ConfigError(
            "resume=... needs checkpoint.enabled=true (the run goes on checkpointing)"
        )
