"""Bind a config group to the factory its ``_target_`` names (Hydra's ``instantiate``).

A group such as ``privacy`` or ``codec`` is one ``_target_`` plus that target's keyword
arguments; ``_target_: null`` (``privacy=none``, ``codec=none``, as ``server_opt=none``) means
the component is off. What the factory needs besides the group's keys (the experiment's data,
model, seed) is passed at the call, as its positional-only parameters, so that no override can
set it (``simulations.override_check`` accepts only keyword parameters).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from hydra.utils import instantiate

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
T = TypeVar("T")


def build_group(
    group: str, conf: Mapping[str, Any], kind: type[T] | tuple[type[T], ...], *context: Any
) -> T | None:
    """What ``conf[group]._target_`` builds from ``context`` (None when the group is off).

    ValueError when the target builds something that is not a ``kind``.
    """
    factory = group_factory(group, conf.get(group))
    if factory is None:
        return None
    built = factory(*context)
    if not isinstance(built, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(
            f"{group}._target_ {conf[group]['_target_']} must build a {names}, "
            f"got {type(built).__name__}"
        )
    return built


def group_factory(group: str, spec: Mapping[str, Any] | None) -> Callable[..., Any] | None:
    """``spec["_target_"]`` with the group's other keys bound, or None for ``_target_: null``.

    Nested ``_target_`` specs stay plain dicts (the factory builds them, e.g. codecs through the
    ``fl_ext`` allowlist clients use too). ValueError naming the key when the target takes no
    such keyword, or needs one the group does not give.
    """
    keys = dict(spec or {})
    target = keys.pop("_target_", None)
    if target is None:
        if keys:
            raise ValueError(
                f"{group} is off ({group}._target_ is null) but sets "
                f"{', '.join(f'{group}.{k}' for k in sorted(keys))}: choose an option, "
                f"{group}=<option>"
            )
        return None
    if not isinstance(target, str):
        raise ValueError(f"{group}._target_ must be a function or class path, or null: {target!r}")
    factory = instantiate(
        {"_target_": target, **keys}, _partial_=True, _recursive_=False, _convert_="all"
    )
    assert isinstance(factory, functools.partial)
    try:
        params = inspect.signature(factory.func).parameters
    except (TypeError, ValueError) as err:
        raise ValueError(f"{group}._target_ {target} takes no keyword settings: {err}") from err
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        settings = sorted(n for n, p in params.items() if p.kind in _KEYWORD)
        for key in sorted(keys):
            if key not in settings:
                raise ValueError(
                    f"{group}.{key} is not a setting of {target}; its settings: "
                    f"{', '.join(settings) or 'none'}"
                )
    for name, p in params.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty and name not in keys:
            raise ValueError(f"{group}.{name} is missing: {target} needs it")
    return factory
