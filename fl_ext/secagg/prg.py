"""Masks in Z_{2^b} expanded from 32-byte seeds by AES-256-CTR.

Each word is a little-endian slice of the keystream, so it is uniform over the whole word and
any b <= word width gets a uniform mask by reduction mod 2^b. The full 256-bit seed keys the
cipher (no folding into a 32-bit numpy seed). The keystream is written straight into the
caller's buffer in bounded chunks, so masking a large model allocates nothing per call.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import DTypeLike

SEED_BYTES = 32
_BLOCK = 16
# Every seed is fresh per round and per pair, and expands exactly one keystream, so a fixed
# all-zero counter block never repeats a (key, counter) pair.
_NONCE = b"\0" * _BLOCK
_CHUNK = 1 << 22  # bytes of keystream per update_into call; bounds the zero-buffer cache
_zeros = bytearray()


def _zero_view(n: int) -> memoryview:
    """A read-only view of ``n`` zero bytes from a module-level buffer grown on demand."""
    global _zeros  # noqa: PLW0603 - grow-only cache shared by all calls
    if len(_zeros) < n:
        _zeros = bytearray(max(n, min(2 * len(_zeros), _CHUNK)))
    return memoryview(_zeros)[:n].toreadonly()


def word_dtype(bits: int) -> np.dtype:
    """The smallest unsigned word that holds values mod 2^bits: uint16 or uint32."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits!r}")
    return np.dtype(np.uint16) if bits <= 16 else np.dtype(np.uint32)


def _check_seed(seed: bytes) -> bytes:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        size = len(seed) if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {size}")
    return bytes(seed)


def _keystream_into(seed: bytes, buf: memoryview) -> None:
    """Fill ``buf`` (writable bytes) with the AES-256-CTR keystream of ``seed``."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
    n = len(buf)
    off = 0
    # update_into wants room for len(data) + block - 1 bytes; keep that slack, finish the tail.
    while n - off >= _BLOCK:
        step = min(_CHUNK, n - off - (_BLOCK - 1))
        off += enc.update_into(_zero_view(step), buf[off:])
    if off < n:
        buf[off:] = enc.update(bytes(n - off))


def mask_words(
    seed: bytes, size: int, dtype: DTypeLike, *, out: np.ndarray | None = None
) -> np.ndarray:
    """``size`` uniform words of ``dtype`` from the keystream of ``seed``, into ``out`` if given."""
    seed = _check_seed(seed)
    dt = np.dtype(dtype)
    if dt.kind != "u":
        raise ValueError(f"dtype must be an unsigned integer dtype, got {dt}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"size must be an int >= 0, got {size!r}")
    if out is None:
        out = np.empty(int(size), dtype=dt)
    elif (
        out.dtype != dt
        or out.ndim != 1
        or out.size != size
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise ValueError(
            f"out must be a writable C-contiguous 1-D {dt} array of size {size}, "
            f"got {out.dtype} shape {out.shape}"
        )
    if out.size:
        _keystream_into(seed, out.view(np.uint8).data.cast("B"))
        if sys.byteorder == "big" and dt.itemsize > 1:
            out.byteswap(inplace=True)  # words are the little-endian view of the keystream
    return out


def add_mask(acc: np.ndarray, seed: bytes, *, sign: int) -> None:
    """``acc += sign * mask(seed)`` modulo 2^16 or 2^32 (unsigned wrap-around), in place.

    Fused: the keystream is made in cache-sized chunks and added at once, so a mask costs one
    keystream pass and one pass over ``acc`` (the words equal :func:`mask_words`'s).
    """
    if isinstance(sign, bool) or sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    if (
        not isinstance(acc, np.ndarray)
        or acc.dtype not in (np.uint16, np.uint32)
        or acc.ndim != 1
        or not acc.flags.c_contiguous
        or not acc.flags.writeable
    ):
        desc = f"{acc.dtype} shape {acc.shape}" if isinstance(acc, np.ndarray) else type(acc)
        raise ValueError(f"acc must be a writable C-contiguous 1-D uint16/uint32 array, got {desc}")
    seed = _check_seed(seed)
    enc = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
    step = _FUSE // acc.dtype.itemsize  # words per chunk: keystream and acc slice stay in cache
    buf = _fuse_buffer()
    op = np.add if sign == 1 else np.subtract
    zeros = _zero_view(_FUSE)
    for start in range(0, acc.size, step):
        part = acc[start : start + step]
        enc.update_into(zeros[: part.nbytes], buf)
        words = np.frombuffer(buf, dtype=acc.dtype, count=part.size)
        if sys.byteorder == "big" and acc.dtype.itemsize > 1:
            words = words.byteswap()
        op(part, words, out=part)


_FUSE = 1 << 19
_fuse: list[bytearray] = []


def _fuse_buffer() -> bytearray:
    """One reusable chunk buffer (with the slack ``update_into`` asks for)."""
    if not _fuse:
        _fuse.append(bytearray(_FUSE + _BLOCK - 1))
    return _fuse[0]


def prg_bytes_per_second(nbytes: int = 1 << 26) -> float:
    """Measured keystream speed in this process (best of three), in bytes per second."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"nbytes must be an int >= 1, got {nbytes!r}")
    buf = np.empty(nbytes, dtype=np.uint8)
    seed = bytes(range(SEED_BYTES))
    mask_words(
        seed, min(nbytes, 1 << 16), np.dtype(np.uint8)
    )  # warm up the cipher and the zero buffer
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        mask_words(seed, nbytes, np.dtype(np.uint8), out=buf)
        best = min(best, time.perf_counter() - t0)
    return nbytes / max(best, 1e-9)
