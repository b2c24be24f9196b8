"""JSON-able snapshots of random generators, so a resumed run draws what the original would.

Python ``random.Random``, numpy ``Generator`` and torch ``Generator`` each keep their state
differently; these two functions hide that. Generators whose output must stay secret (DP
noise) are never snapshotted: they are reseeded instead.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch

Rng = random.Random | np.random.Generator | torch.Generator


def rng_state(rng: Rng) -> dict[str, Any]:
    """A JSON-able snapshot of ``rng``."""
    if isinstance(rng, random.Random):
        version, internal, gauss = rng.getstate()
        return {"kind": "python", "state": [version, list(internal), gauss]}
    if isinstance(rng, np.random.Generator):
        return {"kind": "numpy", "state": rng.bit_generator.state}
    if isinstance(rng, torch.Generator):
        raw = rng.get_state().numpy().tobytes()
        return {"kind": "torch", "state": base64.b64encode(raw).decode()}
    raise TypeError(f"cannot snapshot a {type(rng).__name__}")


def restore_rng(rng: Rng, snapshot: dict[str, Any]) -> None:
    """Put ``rng`` back in the state ``snapshot`` recorded (same kind only)."""
    kind = snapshot.get("kind")
    if isinstance(rng, random.Random) and kind == "python":
        version, internal, gauss = snapshot["state"]
        rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
    elif isinstance(rng, np.random.Generator) and kind == "numpy":
        rng.bit_generator.state = snapshot["state"]
    elif isinstance(rng, torch.Generator) and kind == "torch":
        raw = np.frombuffer(base64.b64decode(snapshot["state"]), dtype=np.uint8)
        rng.set_state(torch.from_numpy(raw.copy()))
    else:
        raise ValueError(f"snapshot of kind {kind!r} does not fit a {type(rng).__name__}")
