"""A client's update as integers in Z_{2^b}: clipped, quantized, weighted, summable without wrap.

Masks hide a vector only in a finite ring, so before masking every client maps its float
update to integers the same way: clip each coordinate to ``[-clip_range, clip_range]``,
scale to ``[-levels, levels]`` with stochastic rounding (unbiased; the codecs' counter-based
uniforms), multiply by its capped integer weight, and append the weight itself as one more
coordinate, so the server learns only the sums of both. The modulus ``2^bits`` is chosen so
that the signed sum of ``max_clients`` such vectors (plus the distributed-DP noise bound)
cannot wrap: a configuration that could is refused with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fl_ext.codecs import kernels
from fl_ext.secagg.prg import word_dtype

MAX_BITS = 32
_NO_NOISE = np.empty(0, dtype=np.int64)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def bits_needed(*, max_clients: int, levels: int, max_weight: int, noise_bound: int = 0) -> int:
    """Bits of a modulus in which the signed sum of ``max_clients`` vectors cannot wrap.

    Every coordinate of the sum lies in ``[-B, B]`` with ``B = max_clients * max_weight *
    levels + noise_bound`` (the weight coordinate in ``[0, max_clients * max_weight]``), and
    a signed value in ``[-B, B]`` needs ``B < 2^(bits-1)``.
    """
    bound = max_clients * max_weight * levels + noise_bound
    return int(bound).bit_length() + 1


@dataclass(frozen=True)
class SecAggEncoding:
    """The integer encoding every client of a round uses (see the module docstring)."""

    clip_range: float
    levels: int
    max_weight: int
    bits: int
    size: int  # model parameters; the encoded vector has size + 1 words (the weight last)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ValueError(f"clip_range must be finite and > 0, got {self.clip_range!r}")
        _positive_int("levels", self.levels)
        _positive_int("max_weight", self.max_weight)
        _positive_int("size", self.size)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ValueError(f"bits must be an integer, got {self.bits!r}")
        if not 2 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in [2, {MAX_BITS}], got {self.bits}")

    @classmethod
    def plan(
        cls,
        *,
        clip_range: float,
        levels: int,
        max_weight: int,
        max_clients: int,
        size: int,
        bits: int | None = None,
        noise_bound: int = 0,
    ) -> SecAggEncoding:
        """The encoding for up to ``max_clients``; ``bits=None`` picks the fewest that fit.

        A ``bits`` too small for the sum is refused with the arithmetic that needs more.
        """
        _positive_int("max_clients", max_clients)
        _positive_int("levels", levels)
        _positive_int("max_weight", max_weight)
        if isinstance(noise_bound, bool) or not isinstance(noise_bound, int) or noise_bound < 0:
            raise ValueError(f"noise_bound must be an integer >= 0, got {noise_bound!r}")
        need = bits_needed(
            max_clients=max_clients, levels=levels, max_weight=max_weight, noise_bound=noise_bound
        )
        if need > MAX_BITS:
            raise ValueError(
                f"the secure sum needs {need} bits ({max_clients} clients x weight cap "
                f"{max_weight} x {levels} levels + noise bound {noise_bound}), more than the "
                f"{MAX_BITS} supported: lower max_weight, levels or the number of clients"
            )
        if bits is not None and bits < need:
            raise ValueError(
                f"bits={bits} could wrap: {max_clients} clients x weight cap {max_weight} x "
                f"{levels} levels + noise bound {noise_bound} = "
                f"{max_clients * max_weight * levels + noise_bound} needs a signed range of "
                f"{need} bits; use bits >= {need} or bits: auto"
            )
        return cls(
            clip_range=float(clip_range),
            levels=levels,
            max_weight=max_weight,
            bits=need if bits is None else bits,
            size=size,
        )

    @property
    def dtype(self) -> np.dtype:
        """The word type masks are added in (uint16 up to 16 bits, else uint32)."""
        return np.dtype(word_dtype(self.bits))

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    def weight_of(self, num_examples: int, examples_per_weight: int = 1) -> int:
        """The client's integer weight: its examples in units, capped at ``max_weight``."""
        units = -(-max(int(num_examples), 0) // max(int(examples_per_weight), 1))
        return int(min(max(units, 1), self.max_weight))

    def encode(
        self, update: np.ndarray, *, weight: int, seed: int, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """``size + 1`` words: the weighted quantized update, then the weight (mod 2^bits).

        ``noise`` (int64, ``size`` values): the client's share of distributed-DP noise,
        added in the integer domain before masking.
        """
        flat = np.ascontiguousarray(update, dtype=np.float32).reshape(-1)
        if flat.shape[0] != self.size:
            raise ValueError(f"update has {flat.shape[0]} values, the encoding {self.size}")
        if not np.isfinite(flat).all():
            raise ValueError("update holds NaN or Inf: nothing to encode")
        if isinstance(weight, bool) or not 1 <= int(weight) <= self.max_weight:
            raise ValueError(f"weight must be in [1, max_weight={self.max_weight}], got {weight!r}")
        if noise is not None and noise.shape != (self.size,):
            raise ValueError(f"noise has shape {noise.shape}, expected ({self.size},)")
        words = np.empty(self.size + 1, dtype=self.dtype)
        kernels.quantize_range(
            flat, self.clip_range, self.levels, int(weight), np.uint64(seed % (1 << 64)),
            _NO_NOISE if noise is None else noise.astype(np.int64, copy=False),
            np.int64(self.modulus_mask), words[: self.size],
        )  # fmt: skip
        words[self.size] = int(weight)
        return words

    def signed(self, total: np.ndarray) -> np.ndarray:
        """A sum in Z_{2^bits} back to the signed integers it stands for (int64)."""
        values = total.astype(np.int64) & self.modulus_mask
        values[values >= 1 << (self.bits - 1)] -= 1 << self.bits
        return values

    def decode(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """The weighted mean update (float32) and the total weight, from the unmasked sum."""
        if total.shape != (self.size + 1,):
            raise ValueError(f"sum has shape {total.shape}, expected ({self.size + 1},)")
        values = self.signed(total)
        weight = int(values[self.size])
        if weight < 1:
            raise ValueError(f"the unmasked total weight is {weight}: the sum is corrupt")
        mean = values[: self.size].astype(np.float64) * (self.clip_range / self.levels / weight)
        return mean.astype(np.float32), weight

    def config(self) -> dict[str, int | float]:
        """The entries a client needs to encode the same way (in the train message)."""
        return {
            "secagg-clip-range": self.clip_range,
            "secagg-levels": self.levels,
            "secagg-max-weight": self.max_weight,
            "secagg-bits": self.bits,
            "secagg-size": self.size,
        }

    @classmethod
    def from_config(cls, config: dict[str, object]) -> SecAggEncoding:
        """Inverse of :meth:`config`, validated (a message from the server is input too)."""
        try:
            return cls(
                clip_range=float(config["secagg-clip-range"]),  # type: ignore[arg-type]
                levels=config["secagg-levels"],  # type: ignore[arg-type]
                max_weight=config["secagg-max-weight"],  # type: ignore[arg-type]
                bits=config["secagg-bits"],  # type: ignore[arg-type]
                size=config["secagg-size"],  # type: ignore[arg-type]
            )
        except KeyError as err:
            raise ValueError(f"secure-aggregation config lacks {err.args[0]!r}") from None
