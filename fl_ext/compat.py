"""Which fl-ext versions can work together in one federation.

A client and a server are compatible when their versions share the major number and, before
1.0, the minor number too (semantic versioning: 0.x releases may change the wire format).
The model schema (parameter names, shapes, dtypes: :func:`fl_ext.checkpoint.schema_hash`)
must match exactly.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from fl_ext.refusals import INCOMPATIBLE

__all__ = ["INCOMPATIBLE", "incompatibility", "parse_version", "schema_hash", "schema_mismatch"]
EVALUATE_RECEIVED = "evaluate-received"  # train config flag: evaluate the received model first
VERSION_KEY = "fl-ext-version"
SCHEMA_KEY = "schema-hash"
DATA_HASH_KEY = "data-hash"  # SHA-256 of the client's partition: its data version, never data
DATA_SIZE_KEY = "data-size"  # examples in it
MAX_WIDTH_KEY = "max-width"  # the widest sub-model the device holds (its node config)
CLIENT_INFO = "client-info"  # the ConfigRecord every reply carries

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?([.+-].*)?$")


def parse_version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string; ValueError for anything else."""
    match = _VERSION.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"not a version: {text!r} (expected MAJOR.MINOR[.PATCH])")
    return int(match.group(1)), int(match.group(2))


def incompatibility(local: str, remote: str, *, remote_name: str = "client") -> str | None:
    """Why the ``remote`` side's version cannot work with ours (``local``), or None if it can."""
    try:
        ours, theirs = parse_version(local), parse_version(remote)
    except ValueError as err:
        return f"{remote_name} version unreadable: {err}"
    if ours[0] != theirs[0] or (ours[0] == 0 and ours[1] != theirs[1]):
        need = f"{ours[0]}.x" if ours[0] > 0 else f"{ours[0]}.{ours[1]}.x"
        return f"{remote_name} runs fl-ext {remote}, this side {local} (needs {need})"
    return None


def schema_mismatch(server: str, client: str) -> str | None:
    """Why the client's model does not fit the server's, or None."""
    if server == client:
        return None
    return (
        f"model schema differs (client {client[:12] or 'none'}, server {server[:12]}): "
        "parameter names, shapes or dtypes do not match"
    )


def schema_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the parameter names, shapes and dtypes, in order (not the values).

    Two models with the same hash exchange parameters without reshaping; server and
    clients compare it to refuse an incompatible model before any update is used.
    """
    text = ";".join(f"{k}:{tuple(v.shape)}:{np.dtype(v.dtype).str}" for k, v in arrays.items())
    return hashlib.sha256(text.encode()).hexdigest()
