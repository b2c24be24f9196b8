"""Robust aggregation: fl-ext vs Flower 1.41 (legacy functions and Message-API helpers) vs byzfl.

    python -m bench.aggregators [--shapes 50x1000000 200x100000] [--repeats 3]

Same float32 inputs for everyone (honest Gaussian rows plus f = n/5 rows scaled by 10), 2 CPU
threads. Printed per rule: median seconds, extra memory, ratio to the fastest
*correct* anchor, and the max deviation from a float64 reference (relative to the reference's
largest value; above 1e-5 counts as wrong). The memory-pass limit is one ``torch.clone`` of the
input, timed in the same run. byzfl is installed with ``--no-deps`` (bench extra); its package
``__init__`` imports torchvision and seaborn for its training benchmark, which are not
installed here, so its aggregators are loaded without running that ``__init__``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
from collections.abc import Callable

import numpy as np
import torch

from fl_ext.aggregators import (
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MultiKrum,
    TrimmedMean,
)
from fl_ext.preagg import NNM

WRONG = 1e-5
GM_ITERS = 10


# ---------------------------------------------------------------- float64 references
def ref_dist(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d = np.zeros((n, n))
    for i in range(n):
        diff = x - x[i]
        d[i] = np.einsum("ij,ij->i", diff, diff)
    return d


def ref_krum_select(x: np.ndarray, f: int, m: int) -> np.ndarray:
    d = ref_dist(x)
    n = len(x)
    k = max(n - f - 2, 1)
    scores = np.array([np.sort(np.delete(d[i], i))[:k].sum() for i in range(n)])
    return np.argsort(scores, kind="stable")[:m]


def ref_bulyan(x: np.ndarray, f: int) -> np.ndarray:
    d = ref_dist(x)
    remaining, picked = list(range(len(x))), []
    for _ in range(len(x) - 2 * f):
        k = max(len(remaining) - f - 2, 1)
        scores = [np.sort([d[i, j] for j in remaining if j != i])[:k].sum() for i in remaining]
        best = remaining[int(np.argmin(scores))]
        picked.append(best)
        remaining.remove(best)
    sel = np.sort(x[picked], axis=0)
    theta = len(sel)
    beta = theta - 2 * f
    med = np.median(sel, axis=0)
    order = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(sel, order, axis=0).mean(axis=0)


def ref_gm(x: np.ndarray, iters: int, nu: float) -> np.ndarray:
    z = x.mean(0)
    for _ in range(iters):
        b = 1.0 / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z = (b[:, None] * x).sum(0) / b.sum()
    return z


def ref_cc(x: np.ndarray, tau: float, iters: int) -> np.ndarray:
    v = np.zeros(x.shape[1])
    for _ in range(iters):
        u = x - v
        s = np.minimum(1.0, tau / np.maximum(np.linalg.norm(u, axis=1), 1e-300))
        v = v + (s[:, None] * u).mean(0)
    return v


def ref_nnm_mean(x: np.ndarray, f: int) -> np.ndarray:
    d = ref_dist(x)
    n = len(x)
    out = np.zeros(x.shape[1])
    for i in range(n):
        keys = np.lexsort((np.arange(n), np.where(np.arange(n) == i, -1.0, d[i])))
        out += x[keys[: n - f]].mean(0)
    return out / n


# ---------------------------------------------------------------- anchors
def load_byzfl() -> types.ModuleType | None:
    """byzfl's aggregators without its package ``__init__`` (which imports its training
    benchmark and, with it, torchvision and seaborn, not installed here)."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = package
    aggregators = importlib.import_module("byzfl.aggregators")
    return aggregators


def flower_legacy() -> types.ModuleType:
    from flwr.server.strategy import aggregate

    return aggregate


def legacy_results(x: np.ndarray) -> list[tuple[list[np.ndarray], int]]:
    return [([row], 1) for row in x]


def message_api_multikrum(x: torch.Tensor, f: int, m: int) -> np.ndarray:
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.serverapp.strategy.multikrum import select_multikrum

    contents = [RecordDict({"arrays": ArrayRecord({"w": Array(row.numpy())})}) for row in x]
    chosen = select_multikrum(contents, f, m)
    return np.mean([c["arrays"]["w"].numpy() for c in chosen], axis=0)


def message_api_bulyan(x: torch.Tensor, f: int) -> np.ndarray:
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
    from flwr.serverapp.strategy.multikrum import select_multikrum

    contents = [RecordDict({"arrays": ArrayRecord({"w": Array(row.numpy())})}) for row in x]
    n = len(contents)
    theta = n - 2 * f
    selected = []
    remaining = list(contents)
    for _ in range(theta):  # Flower's Bulyan: iterated Multi-Krum selection of one
        best = select_multikrum(remaining, f, 1)[0]
        selected.append(best)
        remaining = [c for c in remaining if c is not best]
    beta = theta - 2 * f
    arrays = [[c["arrays"]["w"].numpy()] for c in selected]
    median = [np.median(np.stack([a[0] for a in arrays]), axis=0)]
    return aggregate_n_closest_weights(median, arrays, beta)[0]


# ---------------------------------------------------------------- measurement
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure(
    fn: Callable[[], object], repeats: int
) -> tuple[float, int, np.ndarray | None, str | None]:
    """Median time over ``repeats`` calls, peak extra RSS of one call, the last result."""
    try:
        reset_peak_rss()
        start = _status_kb("VmRSS")
        out = fn()
        extra = max(_status_kb("VmHWM") - start, 0) * 1024
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        value = (
            out.double().numpy()
            if isinstance(out, torch.Tensor)
            else np.asarray(out, dtype=np.float64)
        )
        return statistics.median(times), extra, value, None
    except Exception as err:  # noqa: BLE001  (an anchor failing is a result, not a crash)
        return float("nan"), 0, None, f"{type(err).__name__}: {err}"


def deviation(value: np.ndarray | None, reference: np.ndarray) -> float:
    if value is None or value.shape != reference.shape:
        return float("inf")
    scale = max(float(np.abs(reference).max()), 1e-300)
    return float(np.abs(value - reference).max() / scale)


def make_input(n: int, d: int, f: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    x[:f] *= 10.0
    return x


def rules(
    x: torch.Tensor, f: int, byzfl: types.ModuleType | None
) -> list[tuple[str, np.ndarray, list[tuple[str, Callable[[], object]]]]]:
    xn = x.numpy()
    x64 = xn.astype(np.float64)
    n = x.shape[0]
    legacy = flower_legacy()
    out: list[tuple[str, np.ndarray, list[tuple[str, Callable[[], object]]]]] = []

    def add(
        name: str, reference: np.ndarray, impls: list[tuple[str, Callable[[], object]]]
    ) -> None:
        out.append((name, reference, impls))

    krum_sel = ref_krum_select(x64, f, n - f)
    add(
        "median",
        np.median(x64, axis=0),
        [
            ("fl-ext", lambda: CoordinateMedian(f=f)(x)),
            (
                "flower legacy aggregate_median",
                lambda: legacy.aggregate_median(legacy_results(xn))[0],
            ),
            *([("byzfl Median", lambda: byzfl.Median()(x))] if byzfl else []),
        ],
    )
    add(
        "trimmed mean",
        np.sort(x64, axis=0)[f : n - f].mean(0),
        [
            ("fl-ext", lambda: TrimmedMean(f=f)(x)),
            (
                "flower legacy aggregate_trimmed_avg",
                lambda: legacy.aggregate_trimmed_avg(legacy_results(xn), f / n)[0],
            ),
            *([("byzfl TrMean", lambda: byzfl.TrMean(f=f)(x))] if byzfl else []),
        ],
    )
    add(
        "krum",
        x64[krum_sel[0]],
        [
            ("fl-ext", lambda: Krum(f=f)(x)),
            (
                "flower legacy aggregate_krum",
                lambda: legacy.aggregate_krum(legacy_results(xn), f, 0)[0],
            ),
            ("flower message-API select_multikrum", lambda: message_api_multikrum(x, f, 1)),
            *([("byzfl Krum", lambda: byzfl.Krum(f=f)(x))] if byzfl else []),
        ],
    )
    add(
        "multi-krum",
        x64[krum_sel].mean(0),
        [
            ("fl-ext", lambda: MultiKrum(f=f)(x)),
            (
                "flower legacy aggregate_krum",
                lambda: legacy.aggregate_krum(legacy_results(xn), f, n - f)[0],
            ),
            ("flower message-API select_multikrum", lambda: message_api_multikrum(x, f, n - f)),
            *([("byzfl MultiKrum", lambda: byzfl.MultiKrum(f=f)(x))] if byzfl else []),
        ],
    )
    if n >= 4 * f + 3:
        flower_bulyan_ok = n <= 60  # Flower recomputes all distances per selection: O(n^3 d)
        add(
            "bulyan",
            ref_bulyan(x64, f),
            [
                ("fl-ext", lambda: Bulyan(f=f)(x)),
            ]
            + [
                (
                    "flower legacy aggregate_bulyan",
                    lambda: legacy.aggregate_bulyan(
                        legacy_results(xn), f, legacy.aggregate_krum, to_keep=0
                    )[0],
                ),
                (
                    "flower message-API (select_multikrum + n closest)",
                    lambda: message_api_bulyan(x, f),
                ),
            ]
            * flower_bulyan_ok,
        )
    add(
        f"geometric median ({GM_ITERS} it.)",
        ref_gm(x64, GM_ITERS, 1e-6),
        [
            ("fl-ext", lambda: GeometricMedian(f=f, max_iter=GM_ITERS, tol=1e-300)(x)),
            *(
                [("byzfl GeometricMedian", lambda: byzfl.GeometricMedian(nu=1e-6, T=GM_ITERS)(x))]
                if byzfl
                else []
            ),
        ],
    )
    add(
        "centered clipping (1 it.)",
        ref_cc(x64, 100.0, 1),
        [
            ("fl-ext", lambda: CenteredClipping(f=f, tau=100.0, iterations=1)(x)),
            *(
                [
                    (
                        "byzfl CenteredClipping",
                        lambda: byzfl.CenteredClipping(L=1, tau=100.0)(x.clone()),
                    )
                ]
                if byzfl
                else []
            ),
        ],
    )
    add(
        "NNM (then mean)",
        ref_nnm_mean(x64, f),
        [
            ("fl-ext", lambda: NNM(f=f)(x).double().mean(0)),
            *([("byzfl NNM", lambda: byzfl.NNM(f=f)(x.clone()).double().mean(0))] if byzfl else []),
        ],
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["50x1000000", "200x100000"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", nargs="*", default=None, help="rule names to run (substring match)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    byzfl = load_byzfl()
    malloc = "MALLOC_MMAP_THRESHOLD_" in os.environ
    print(
        f"torch {torch.__version__}, 2 threads, byzfl {'loaded' if byzfl else 'NOT installed'}, "
        f"malloc tuning {'on' if malloc else 'off (default glibc)'}"
    )
    for shape in args.shapes:
        n, d = (int(v) for v in shape.split("x"))
        f = n // 5
        x = make_input(n, d, f)
        copy_s, _, _, _ = measure(x.clone, args.repeats)
        print(
            f"\n### n = {n}, d = {d:,}, f = {f}, input {x.numel() * 4 / 1e6:.0f} MB; memory pass (torch.clone) {copy_s:.4f} s\n"
        )
        print(
            "| rule | implementation | time s | extra MB | vs fastest correct anchor | max rel. deviation | correct |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, reference, impls in rules(x, f, byzfl):
            if args.only and not any(o in name for o in args.only):
                continue
            results = []
            for label, fn in impls:
                t, mem, value, err = measure(fn, args.repeats)
                dev = deviation(value, reference)
                results.append((label, t, mem, dev, err))
            anchors = [r for r in results if r[0] != "fl-ext" and r[3] <= WRONG and r[4] is None]
            best = min((r[1] for r in anchors), default=float("nan"))
            for label, t, mem, dev, err in results:
                if best != best:  # no correct anchor for this rule
                    speed = "no correct anchor"
                elif label == "fl-ext":
                    speed = f"{best / t:.1f}x faster"
                else:
                    speed = f"{t / best:.2f}x the best"
                status = "error: " + err if err else ("yes" if dev <= WRONG else "WRONG")
                print(
                    f"| {name} | {label} | {t:.4f} | {mem / 1e6:.0f} | {speed} | {dev:.1e} | {status} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
