"""Build components from ``_target_`` specs that may arrive over the network.

Hydra's ``instantiate`` imports whatever ``_target_`` names. A spec that travels in a
message to a client must not be able to do that, so clients build components through
:func:`build_from_spec`, which only accepts classes inside ``fl_ext`` that subclass the
expected base class. The server uses the same function so both sides build the same object.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

ALLOWED_PREFIX = "fl_ext."


class SpecError(ValueError):
    """A component spec names something that may not or cannot be built."""


def resolve_target(target: object, base: Callable[..., T]) -> type[T]:
    """Return the class named by ``target`` if it is an ``fl_ext`` subclass of ``base``.

    ``base`` is a class, abstract ones included; it is typed as a callable returning ``T``
    because mypy refuses an abstract class where ``type[T]`` is expected (python/mypy#4717),
    and only the resolved subclass is ever instantiated.
    """
    if not isinstance(base, type):
        raise TypeError(f"base must be a class, got {base!r}")
    if not isinstance(target, str) or not target.startswith(ALLOWED_PREFIX):
        raise SpecError(
            f"_target_ {target!r} is not allowed: it must name a class under "
            f"'{ALLOWED_PREFIX}' that subclasses {base.__name__}"
        )
    module_name, _, class_name = target.rpartition(".")
    try:
        cls: type[T] = getattr(importlib.import_module(module_name), class_name)  # checked below
    except (ImportError, AttributeError) as err:
        raise SpecError(f"_target_ {target!r} cannot be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise SpecError(f"_target_ {target!r} is not a subclass of {base.__name__}")
    return cls


def build_from_spec(spec: Mapping[str, Any], base: Callable[..., T], **extra: Any) -> T:
    """Instantiate ``spec['_target_']`` with the other keys (plus ``extra``) as kwargs.

    Nested specs (values with their own ``_target_``) are built first, under the same
    ``fl_ext`` allowlist.
    """
    if "_target_" not in spec:
        raise SpecError(f"spec {dict(spec)!r} has no '_target_' key")
    cls = resolve_target(spec["_target_"], base)
    kwargs = {
        k: build_from_spec(v, object) if isinstance(v, Mapping) and "_target_" in v else v
        for k, v in spec.items()
        if k != "_target_"
    }
    try:
        return cls(**kwargs, **extra)
    except TypeError as err:
        raise SpecError(f"cannot build {spec['_target_']} from {kwargs}: {err}") from err


def spec_to_json(spec: Mapping[str, Any]) -> str:
    """Serialize a spec canonically (sorted keys) for a message config."""
    return json.dumps(dict(spec), sort_keys=True)


def spec_from_json(text: str) -> dict[str, Any]:
    """Parse a spec received in a message; it must be a JSON object."""
    try:
        spec = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise SpecError(f"spec is not valid JSON: {text!r}") from err
    if not isinstance(spec, dict):
        raise SpecError(f"spec must be a JSON object, got {text!r}")
    return spec
