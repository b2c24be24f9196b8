"""Readable, bounded MLflow run names that say how a run differs from the defaults.

``fedavg-krum+nnm-vs-alie-digits-dirichlet-mlp-seed0 codec=int8 lr=0.1 partition.alpha=0.3``:
strategy, aggregator, pre-aggregators, attack, dataset, partition, model and seed always (the
first three only when not the default), then every other group choice that differs from
``conf/config.yaml``'s defaults and every key whose value differs from what those group
choices give by themselves (a key that follows another by interpolation, such as
``strategy.fraction_train`` following ``fraction_train``, is named once).
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Mapping
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from simulations.config import CONF_DIR, GROUPS, Experiment, outside_hydra

MAX_LENGTH = 150  # characters in a run name
MAX_VALUE = 24  # characters of one value in it
# groups named as `group=option` after the core name when not the default
_EXTRA_GROUPS = (
    "privacy", "codec", "selection", "network", "server_opt", "secagg", "driver", "preprocessing",
    "submodel", "adapter",
)  # fmt: skip
# keys that do not change what a run computes, or are paths
_NOT_NAMED = ("tracking", "checkpoint", "resume", "rollback_from", "aggregation_device",
              "node_wait_timeout", "seed")  # fmt: skip


def run_name(experiment: Experiment, *, max_length: int = MAX_LENGTH) -> str:
    """The run's name: the core (choices, seed), then what differs from the defaults."""
    c = experiment.choices
    default = default_choices()
    core = [c["strategy"]]
    if c["aggregator"] != default.get("aggregator"):
        core.append(c["aggregator"])
    if c.get("preagg", "none") != "none":
        core.append(c["preagg"])
    if c["attack"] != default.get("attack"):
        core.append(f"vs-{c['attack']}")
    core += [c["dataset"], c["partition"], c["model"], f"seed{experiment.cfg.seed}"]
    extras = [f"{g}={c[g]}" for g in _EXTRA_GROUPS if g in c and c[g] != default.get(g)]
    extras += [  # choices of groups conf/config.yaml does not have (robustness: scenario)
        f"{g}={v}"
        for g, v in c.items()
        if g not in (*GROUPS, "preagg") and v not in ("default", "none", "None")
    ]
    extras += [f"{k}={_short(v)}" for k, v in key_differences(experiment).items()]
    return bounded("-".join(core), extras, max_length)


def bounded(core: str, extras: list[str], max_length: int) -> str:
    """``core`` and as many ``extras`` as fit; the rest as ``+N #<hash of all extras>``.

    The hash keeps two runs that differ only in the left-out part apart.
    """
    name = " ".join([core, *extras])
    if len(name) <= max_length:
        return name
    digest = hashlib.sha1("\n".join(extras).encode()).hexdigest()[:6]
    kept: list[str] = []
    for extra in extras:
        tail = f" +{len(extras) - len(kept) - 1} #{digest}"
        if len(" ".join([core, *kept, extra])) + len(tail) > max_length:
            break
        kept.append(extra)
    return " ".join([core, *kept]) + f" +{len(extras) - len(kept)} #{digest}"


def key_differences(experiment: Experiment) -> dict[str, Any]:
    """``{dotted key: value}`` of every key the overrides changed (``~key`` if removed)."""
    baseline = _baseline(_choice_overrides(experiment.choices))
    if baseline is None:
        return {}
    raw = _leaves(baseline)
    actual = _leaves(experiment.resolved())
    followers = {k for k, v in raw.items() if isinstance(v, str) and "${" in v}
    changed = {k for k, v in actual.items() if k not in followers and raw.get(k, _MISSING) != v}
    probe = OmegaConf.create(baseline)  # the baseline with the changed keys: what followers get
    for key in changed:
        OmegaConf.update(probe, key, actual[key], merge=False, force_add=True)
    try:
        followed = _leaves(OmegaConf.to_container(probe, resolve=True))
    except Exception:  # noqa: BLE001  an interpolation only Hydra's runtime resolves
        followed = {}
    out: dict[str, Any] = {}
    for key, value in actual.items():
        if _named(key) and (key in changed or (key in followers and followed.get(key) != value)):
            out[key] = value
    out.update({f"~{k}": "" for k in raw if k not in actual and _named(k)})
    return out


@functools.cache
def default_choices() -> dict[str, str]:
    """The option ``conf/config.yaml`` picks in every group."""
    try:
        with outside_hydra():
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
                cfg = compose(config_name="config", return_hydra_config=True)
    except Exception:  # noqa: BLE001  a name never stops a run
        return dict(_FALLBACK_DEFAULTS)
    return {g: str(cfg.hydra.runtime.choices[g]) for g in GROUPS}


_FALLBACK_DEFAULTS = {"aggregator": "mean", "attack": "none", "privacy": "none", "codec": "none",
                      "selection": "uniform", "network": "none"}  # fmt: skip


_MISSING = object()


def _named(key: str) -> bool:
    return key.lstrip("~").split(".")[0] not in _NOT_NAMED


def _choice_overrides(choices: Mapping[str, str]) -> tuple[str, ...]:
    preagg = choices.get("preagg", "none")
    items = [] if preagg == "none" else preagg.split("+")
    return (*(f"{g}={choices[g]}" for g in GROUPS if g in choices), f"preagg=[{','.join(items)}]")


def _baseline(overrides: tuple[str, ...]) -> dict[str, Any] | None:
    """conf/config.yaml with these group choices only, interpolations kept (a copy)."""
    found = _baseline_cached(overrides)
    return copy.deepcopy(found) if found is not None else None


@functools.lru_cache(maxsize=64)
def _baseline_cached(overrides: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        with outside_hydra():
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
                cfg = compose(config_name="config", overrides=list(overrides))
        plain = OmegaConf.to_container(cfg, resolve=False)
    except Exception:  # noqa: BLE001  a name never stops a run: then only the choices are named
        return None
    if not isinstance(plain, dict):
        return None
    return {str(key): value for key, value in plain.items()}  # a composed config: str keys


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{dotted key: leaf}``; lists are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_leaves(value, f"{name}."))
        else:
            out[name] = value
    return out


def _short(value: Any) -> str:
    """``true``/``null``/``[a,b]`` as in an override, cut to :data:`MAX_VALUE` characters."""
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, list | tuple):
        text = "[" + ",".join(_short(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 2] + ".."
