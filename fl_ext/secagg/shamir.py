"""Shamir t-of-k secret sharing over GF(2^521 - 1) with Python ints.

The Mersenne prime 2^521 - 1 holds any secret of up to 65 bytes (a 32-byte seed or X25519
key) as one field element, so each secret is one polynomial and each share one 66-byte
element. Interpolation uses barycentric weights with a single modular inversion (Montgomery's
batch trick), so combining t shares costs O(t^2) modular multiplications.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

from fl_ext.secagg.keys import SecAggError

PRIME: int = 2**521 - 1
SHARE_BYTES = 66
MAX_SECRET_BYTES = 65


def _check_xs(xs: Sequence[int]) -> None:
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < PRIME:
            raise ValueError(f"share x-coordinate {x!r} is not an int in [1, PRIME - 1]")
    if len(set(xs)) != len(xs):
        raise ValueError(f"share x-coordinates must be distinct, got duplicates in {list(xs)}")


def _check_ys(ys: Sequence[int]) -> None:
    for y in ys:
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < PRIME:
            raise ValueError(f"share value {y!r} is not an int in [0, PRIME)")


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses mod PRIME of nonzero values with one pow() call (Montgomery's trick)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % PRIME
        inv = inv * values[i] % PRIME
    return out


def _weights(xs: Sequence[int]) -> list[int]:
    """Barycentric weights w_i = 1 / prod_{j != i} (x_i - x_j) for distinct xs."""
    dens = []
    for i, xi in enumerate(xs):
        d = 1
        for j, xj in enumerate(xs):
            if j != i:
                d = d * (xi - xj) % PRIME
        dens.append(d)
    return _batch_inverse(dens)


def _basis_at(xs: Sequence[int], weights: Sequence[int], x: int) -> list[int]:
    """Lagrange basis values L_i(x) = w_i * prod_{j != i} (x - x_j), O(t) via prefix/suffix.

    Exact even when ``x`` equals one of the xs (no division by x - x_i).
    """
    t = len(xs)
    diffs = [(x - xi) % PRIME for xi in xs]
    suffix = [1] * (t + 1)
    for i in range(t - 1, -1, -1):
        suffix[i] = suffix[i + 1] * diffs[i] % PRIME
    out = []
    prefix = 1
    for i in range(t):
        out.append(weights[i] * prefix % PRIME * suffix[i + 1] % PRIME)
        prefix = prefix * diffs[i] % PRIME
    return out


@functools.lru_cache(maxsize=4096)
def _basis_cached(xs: tuple[int, ...], x: int) -> tuple[int, ...]:
    """:func:`_basis_at` for a tuple of xs, cached: a round reuses few x-sets many times."""
    return tuple(_basis_at(xs, _weights_cached(xs), x))


@functools.lru_cache(maxsize=1024)
def _weights_cached(xs: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_weights(xs))


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients c_i with f(0) = sum c_i f(x_i) for any polynomial of degree < len(xs)."""
    _check_xs(xs)
    if not xs:
        raise ValueError("lagrange_at_zero needs at least one x-coordinate, got none")
    return _basis_at(xs, _weights(xs), 0)


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> list[int]:
    """Share ``secret`` (big-endian constant term) so that any ``threshold`` of them recover it."""
    if not isinstance(secret, bytes | bytearray) or len(secret) > MAX_SECRET_BYTES:
        size = len(secret) if isinstance(secret, bytes | bytearray) else type(secret).__name__
        raise ValueError(f"secret must be bytes of length <= {MAX_SECRET_BYTES}, got {size}")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"threshold must be an int, got {threshold!r}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold={threshold} must be in [1, len(xs)={len(xs)}]")
    _check_xs(xs)
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    ys = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        ys.append(y)
    return ys


def _split_points(points: Sequence[tuple[int, int]], threshold: int) -> tuple[list[int], list[int]]:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be an int >= 1, got {threshold!r}")
    if len(points) < threshold:
        raise ValueError(f"need at least threshold={threshold} shares, got {len(points)}")
    xs = [int(p[0]) for p in points]
    ys = [int(p[1]) for p in points]
    _check_xs(xs[:threshold])
    _check_ys(ys)
    return xs, ys


def combine(points: Sequence[tuple[int, int]], *, threshold: int, length: int) -> bytes:
    """The secret (``length`` big-endian bytes) from the first ``threshold`` points (x, y).

    SecAggError if the result does not fit in ``length`` bytes, the usual sign of a wrong share.
    """
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= SHARE_BYTES:
        raise ValueError(f"length={length!r} must be an int in [0, {SHARE_BYTES}]")
    xs, ys = _split_points(points, threshold)
    xs, ys = xs[:threshold], ys[:threshold]
    coeffs = _basis_cached(tuple(xs), 0)
    value = sum(c * y for c, y in zip(coeffs, ys, strict=True)) % PRIME
    if value >= 1 << (8 * length):
        raise SecAggError(
            f"reconstructed secret does not fit in {length} bytes (a share is wrong or misrouted)"
        )
    return value.to_bytes(length, "big")


def consistent(points: Sequence[tuple[int, int]], *, threshold: int) -> bool:
    """True iff every point lies on the degree-(t-1) polynomial through the first t points.

    Detects a lying share holder when more than ``threshold`` shares arrive.
    """
    xs, ys = _split_points(points, threshold)
    for x in xs[threshold:]:
        if not 1 <= x < PRIME:
            raise ValueError(f"share x-coordinate {x!r} is not an int in [1, PRIME - 1]")
    base_x, base_y = tuple(xs[:threshold]), ys[:threshold]
    for x, y in zip(xs[threshold:], ys[threshold:], strict=True):
        basis = _basis_cached(base_x, x)
        if sum(b * v for b, v in zip(basis, base_y, strict=True)) % PRIME != y:
            return False
    return True


def share_to_bytes(y: int) -> bytes:
    """A share value as 66 big-endian bytes."""
    if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < PRIME:
        raise ValueError(f"share value {y!r} is not an int in [0, PRIME)")
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(b: bytes) -> int:
    """Inverse of :func:`share_to_bytes`; ValueError on a wrong length or a value >= PRIME."""
    if not isinstance(b, bytes | bytearray) or len(b) != SHARE_BYTES:
        size = len(b) if isinstance(b, bytes | bytearray) else type(b).__name__
        raise ValueError(f"share must be {SHARE_BYTES} bytes, got {size}")
    y = int.from_bytes(b, "big")
    if y >= PRIME:
        raise ValueError("share value is not a field element (>= PRIME)")
    return y
