"""Error feedback (Seide et al., 2014; Karimireddy et al., 2019).

What a lossy codec dropped this round is added to the next round's input: nothing is lost.
"""

from __future__ import annotations

import numpy as np

from fl_ext.codecs.base import Codec, Payload


class ErrorFeedback:
    """Residual state of one sender; the caller persists ``residual`` between rounds."""

    def __init__(self, residual: np.ndarray | None = None) -> None:
        self.residual = residual

    def encode(self, codec: Codec, x: np.ndarray, rng: np.random.Generator) -> Payload:
        """Encode ``x + residual`` and keep what the codec dropped as the next residual."""
        corrected = x if self.residual is None else x + self.residual
        if self.residual is not None and self.residual.shape != x.shape:
            raise ValueError(f"residual shape {self.residual.shape} != update shape {x.shape}")
        corrected = corrected.astype(np.float32, copy=False)
        payload = codec.encode(corrected, rng)
        self.residual = corrected - codec.decode(payload, x.shape[0])
        return payload
