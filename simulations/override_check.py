"""Refuse overrides that name a key the experiment does not have, and suggest the closest one.

Hydra refuses ``num_round=2`` (not in the config) but suggests ``+num_round=2``, which it then
accepts silently: the run uses the default ``num_rounds`` and the typo goes unnoticed. Here an
added key (``+key=...`` / ``++key=...``) is accepted only where it can mean something:

- a config group (``+preset=robust``, ``+scenario=iid``), or
- a keyword parameter of the component built from that node's ``_target_``
  (``+aggregator.some_param=...`` when the class accepts ``some_param``).

Everything else is a :class:`~simulations.config.ConfigError` naming the key and the closest
known keys.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf


def parse(overrides: Iterable[str]) -> list[Override]:
    """Hydra's own parse of the override strings."""
    return list(OverridesParser.create().parse_overrides(list(overrides)))


def additions(parsed: list[Override]) -> list[Override]:
    """The ``+key=...`` and ``++key=...`` overrides."""
    return [o for o in parsed if o.is_add() or o.is_force_add()]


def is_group(conf_dir: Path, key: str) -> bool:
    """Whether ``key`` names a config group (a folder of options under ``conf_dir``)."""
    return (conf_dir / key.replace(".", "/")).is_dir()


@functools.cache
def _key_sources(conf_dir: Path) -> dict[str, tuple[str, ...]]:
    """Every dotted key of ``config.yaml`` and of every group option -> options that have it.

    Keys of ``config.yaml`` map to ``()``; a group option's keys to ``("group=option", ...)``.
    """
    sources: dict[str, set[str]] = {}

    def walk(prefix: str, node: Any, source: str | None) -> None:
        if not isinstance(node, dict):
            return
        for k, v in node.items():
            if k == "defaults" and not prefix:
                continue
            path = f"{prefix}.{k}" if prefix else str(k)
            found = sources.setdefault(path, set())
            if source is not None:
                found.add(source)
            walk(path, v, source)

    walk("", yaml.safe_load((conf_dir / "config.yaml").read_text()) or {}, None)
    for option in sorted(conf_dir.glob("*/*.yaml")):
        group, text = option.parent.name, option.read_text()
        sources.setdefault(group, set())
        data = yaml.safe_load(text) or {}
        walk("" if "# @package _global_" in text else group, data, f"{group}={option.stem}")
    return {k: tuple(sorted(v)) for k, v in sources.items()}


def known_keys(conf_dir: Path) -> tuple[str, ...]:
    """Every dotted key of ``config.yaml`` and of every option of every group."""
    return tuple(sorted(_key_sources(conf_dir)))


def suggestion(key: str, conf_dir: Path, value: object = None) -> str:
    """A hint for an unknown ``key`` (set to ``value``), or ''.

    Where ``key`` exists (another group option), else how to choose the group option ``value``
    names (``privacy.mode=dp_sgd``: ``privacy=dp_sgd``), else the closest known keys.
    """
    sources = _key_sources(conf_dir)
    if sources.get(key):
        return f"; {key!r} exists only with {' or '.join(sources[key])}"
    group = key.rpartition(".")[0]
    named = isinstance(value, str) and value.replace("-", "_").isidentifier()
    if group and named and (conf_dir / group / f"{value}.yaml").is_file():
        return f"; {value!r} is an option of the group '{group}': choose it with {group}={value}"
    close = difflib.get_close_matches(key, known_keys(conf_dir), n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    group = key.split(".", 1)[0]
    members = [k for k in known_keys(conf_dir) if k.startswith(group + ".")][:8]
    return f"; keys of '{group}': {', '.join(members)}" if members else ""


def _accepts(target: str, name: str) -> bool:
    """Whether the class (or function) at ``target`` takes a keyword argument ``name``."""
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
        params = inspect.signature(obj).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return False
    if name in params:
        return params[name].kind is not inspect.Parameter.POSITIONAL_ONLY
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_additions(parsed: list[Override], base: DictConfig, conf_dir: Path) -> str | None:
    """The reason the first unknown added key is refused, or None when all are meaningful.

    ``base``: the config composed without the added keys.
    """
    for override in additions(parsed):
        key = override.key_or_group
        if is_group(conf_dir, key) or OmegaConf.select(base, key) is not None:
            continue
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else None
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if isinstance(target, str) and _accepts(target, name):
            continue
        text = override.input_line or key
        where = f"{target} takes no parameter {name!r}" if isinstance(target, str) else ""
        return (
            f"unknown key {key!r} in override {text!r}"
            f"{' (' + where + ')' if where else ''}{suggestion(key, conf_dir, override.value())}"
        )
    return None
