"""Codec speed and compression vs plain numpy/torch baselines for the same job, one process.

    python -m bench.codecs [--size 10000000] [--repeats 5] [--threads 2]

Input: d float32 values (normal, varied scale). Per codec: encode and decode throughput in GB/s
of float32 input, and the compression ratio (float32 bytes / payload bytes). Beside them, in the
same run: the memory-copy limit (``np.copyto``) and the plain baseline for each job (blockwise
int8 in numpy, ``torch.quantize_per_tensor``, ``np.argpartition`` / ``torch.topk`` and a
threshold from a 1% sample for top-k, ``np.packbits`` for signs, ``astype(float16)``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from fl_ext.codecs import (
    QSGD,
    BlockQuant,
    Cast,
    Chain,
    Codec,
    RandomK,
    SignScale,
    Ternary,
    TopK,
    payload_bytes,
)


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def numpy_int8(x: np.ndarray, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    pad = np.pad(x, (0, -len(x) % block)).reshape(-1, block)
    scale = np.abs(pad).max(1) / 127
    q = np.rint(pad / np.where(scale == 0, 1, scale)[:, None]).astype(np.int8)
    return q, scale.astype(np.float32)


def numpy_int8_decode(q: np.ndarray, scale: np.ndarray, d: int) -> np.ndarray:
    return (q.astype(np.float32) * scale[:, None]).reshape(-1)[:d]


def sampled_threshold_topk(x: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    sample = np.abs(x[rng.integers(0, len(x), len(x) // 100)])
    t = np.quantile(sample, 1 - frac)
    return np.flatnonzero(np.abs(x) >= t)


def baselines(
    x: np.ndarray, rng: np.random.Generator
) -> dict[str, dict[str, Callable[[], object]]]:
    """Plain implementations per job: encode (and decode where it applies)."""
    k = len(x) // 100
    xt = torch.from_numpy(x)
    q, s = numpy_int8(x)
    qt = torch.quantize_per_tensor(xt, float(xt.abs().max()) / 127, 0, torch.qint8)
    half = x.astype(np.float16)
    bits = np.packbits(x < 0)
    return {
        "float16": {
            "encode": lambda: x.astype(np.float16),
            "decode": lambda: half.astype(np.float32),
        },
        "int8": {
            "encode": lambda: numpy_int8(x),
            "decode": lambda: numpy_int8_decode(q, s, len(x)),
            "encode (torch.quantize_per_tensor)": lambda: torch.quantize_per_tensor(
                xt, float(xt.abs().max()) / 127, 0, torch.qint8
            ),
            "decode (torch.dequantize)": qt.dequantize,
        },
        "top-1%": {
            "encode (np.argpartition)": lambda: np.argpartition(np.abs(x), -k)[-k:],
            "encode (torch.topk)": lambda: torch.topk(xt.abs(), k),
            "encode (1% sample threshold)": lambda: sampled_threshold_topk(x, 0.01, rng),
        },
        "sign": {
            "encode": lambda: np.packbits(x < 0),
            "decode": lambda: np.where(np.unpackbits(bits, count=len(x)).astype(bool), -1.0, 1.0),
        },
    }


def ours() -> dict[str, tuple[str, Codec]]:
    return {
        "float16": ("float16", Cast(dtype="float16")),
        "bfloat16": ("float16", Cast(dtype="bfloat16")),
        "int8 (block 256)": ("int8", BlockQuant(bits=8)),
        "int8 stochastic": ("int8", BlockQuant(bits=8, rounding="stochastic")),
        "int4 (block 64)": ("int8", BlockQuant(bits=4, block=64)),
        "QSGD (16 levels)": ("int8", QSGD(levels=16)),
        "top-1% exact": ("top-1%", TopK(fraction=0.01)),
        "top-1% sampled": ("top-1%", TopK(fraction=0.01, method="sampled")),
        "random-1%": ("top-1%", RandomK(fraction=0.01)),
        "sign + scale": ("sign", SignScale()),
        "ternary": ("sign", Ternary()),
        "top-1% -> int8": ("top-1%", Chain(stages=[TopK(fraction=0.01), BlockQuant(bits=8)])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    d = args.size
    x = (rng.normal(size=d) * rng.uniform(0.01, 3, size=d)).astype(np.float32)
    gb = x.nbytes / 1e9
    dst = np.empty_like(x)
    copy_rate = gb / timed(lambda: np.copyto(dst, x), args.repeats)
    print(f"d = {d:,} float32 ({gb * 1e3:.0f} MB), {args.threads} threads; GB/s of float32 input")
    print(f"memory copy (np.copyto): {copy_rate:.1f} GB/s; half of it: {copy_rate / 2:.1f}\n")
    base = baselines(x, rng)
    print("| job | plain baseline | GB/s |")
    print("|---|---|---|")
    best: dict[tuple[str, str], float] = {}
    for job, fns in base.items():
        for name, fn in fns.items():
            rate = gb / timed(fn, args.repeats)
            kind = "encode" if name.startswith("encode") else "decode"
            best[(job, kind)] = max(best.get((job, kind), 0.0), rate)
            print(f"| {job} | {name} | {rate:.2f} |")
    print()
    print(
        "| codec | ratio | encode GB/s | decode GB/s | vs best baseline (enc / dec) | vs copy/2 (enc / dec) |"
    )
    print("|---|---|---|---|---|---|")
    for name, (job, codec) in ours().items():
        payload = codec.encode(x, rng)
        enc = gb / timed(lambda c=codec: c.encode(x, rng), args.repeats)
        dec = gb / timed(lambda c=codec, p=payload: c.decode(p, d), args.repeats)
        ratio = x.nbytes / payload_bytes(payload)
        be, bd = best.get((job, "encode")), best.get((job, "decode"))
        vs_base = f"{enc / be:.1f}x / " + (f"{dec / bd:.1f}x" if bd else "-") if be else "-"
        half = copy_rate / 2
        print(
            f"| {name} | {ratio:.1f} | {enc:.2f} | {dec:.2f} | {vs_base} | "
            f"{enc / half:.2f} / {dec / half:.2f} |"
        )


if __name__ == "__main__":
    main()
