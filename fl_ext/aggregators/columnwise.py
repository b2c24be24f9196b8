"""Apply a per-column reduction over column blocks (bounded temporaries, cache friendly)."""

from __future__ import annotations

from collections.abc import Callable

import torch

BLOCK = 1 << 14


def columnwise(
    x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor], *, block: int = BLOCK
) -> torch.Tensor:
    """``out[j] = reduce(x[:, j])`` computed block by block; ``reduce`` maps [n, b] -> [b]."""
    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[1], block):
        stop = min(start + block, x.shape[1])
        out[start:stop] = reduce(x[:, start:stop])
    return out
