"""Secure aggregation: fl-ext's SecAgg+ vs Flower 1.41's SecAgg+, one round, same inputs.

    python -m bench.secagg                                  # n in {10, 50, 100}, d in {1e5, 1e6}
    python -m bench.secagg --n 10 50 100 --d 100000 --drop 0 0.2 --json /tmp/secagg.json
    python -m bench.secagg --n 4 --d 1000 --drop 0 0.25     # the smoke test's setting

Inputs: ``n`` float32 vectors of ``d`` values, uniform in [-0.05, 0.05], the same for every
implementation and drop fraction of one (n, d); clip range 0.1 so nothing clips; every
client's weight is 1. Drops happen after the share phase: the first ``round(drop * n)``
clients advertise keys and share, then never send a masked vector.

Implementations (one table row and one JSON row each per setting):

* ``fl-ext plus`` / ``fl-ext full``: :class:`fl_ext.secagg.client.ClientSession` and
  :class:`fl_ext.secagg.server.ServerSession` driven phase by phase (``keys``, ``shares``,
  ``masked``, ``unmask``) with the records the handlers (:mod:`clients.mods.secagg`) and the
  driver (:mod:`strategies.secure_rounds`) build, planned by
  :class:`strategies.secure_aggregation.SecureAggregation` (threshold fraction 0.5, int8
  range: ``levels=127``; ``plus``: the SecAgg+ graph of default degree, ``full``: every pair).
  Client seconds per phase: what a handler does with one message (parse the fields, load the
  session from its stored state, the session call, plus encode + bit-pack in the masked
  phase, store the state, build the reply record), summed over clients. Server seconds per
  phase: build that phase's requests, parse the replies (unpack of the masked vectors
  included), the ``add_*`` / ``close_*`` calls, and in the unmask phase the decode. Bytes:
  :func:`strategies.wire.record_wire_bytes` of every request and reply (Flower's framing
  included, as the anchor's), computed outside the timed parts. There is no transport.
* ``flower secagg+``: :func:`bench.secagg_flower.run_flower_secaggplus` (Flower's own
  ``SecAggPlusWorkflow`` + ``secaggplus_mod``, in process), ``num_shares``/``threshold`` as
  its CLI picks them (:func:`bench.secagg_flower.flower_shares`; where that gives a
  threshold Flower refuses, n = 4, all ``n`` shares), ``quantization_range=255``
  (its 8-bit range) with ``clipping_range=0.1``, ``modulus_range=2**32``; Flower uploads its
  masked vector as int64 (64 bits a parameter on the wire). Its stages ``setup``,
  ``share_keys``, ``collect_masked_vectors``, ``unmask`` are reported as ``keys``, ``shares``,
  ``masked``, ``unmask``. Above ``--anchor-max-n`` / ``--anchor-max-d`` it is skipped (the
  row says why): at n = 100 one row takes about 15 minutes here.

Per-client means: a phase's client seconds divided by the clients that ran it (the masked
phase: the survivors); the total divided by ``n``. The same for both implementations.

Physical limit: the measured AES-CTR keystream speed (:func:`fl_ext.secagg.prg.prg_bytes_per_second`,
same run) times the mask bytes each side must expand: a client ``(1 + live neighbours) *
(d + 1) * word bytes`` (self mask plus one pairwise mask per neighbour); the server
``(survivors + sum over dropped nodes of their surviving neighbours) * (d + 1) * word bytes``.
"x limit" is our measured seconds over that limit (client: the masked phase, per-client mean;
server: the unmask phase). The floor is :func:`bench.secagg_flower.plain_sum_seconds` of the
survivors' vectors (what summing costs with no security at all).

Threads: ``--threads`` (default 1) sets numba's thread count for the encode, pack and unpack
kernels. The keystream is one thread and so is Flower's numpy; and on a machine whose cores
are shared, numba's parallel kernels wait for busy cores (``pack`` of 1e5 words measured 12-16
ms with 2 threads while another process held one of the 2 cores, 0.33 ms with 1 thread).

Correctness: our decoded mean and Flower's aggregate against the float64 mean of the
survivors' inputs (max abs error; ours must be <= one quantization step 0.1/127), and our
unmasked integer sum against the plain sum (mod 2^bits) of the same encoded words:
``exact`` or ``WRONG``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

import fl_ext.secagg as secagg_package
from bench.secagg_flower import (
    FlowerSecAggHaltedError,
    flower_shares,
    plain_sum_seconds,
    quantization_step,
    run_flower_secaggplus,
)
from clients.mods.secagg import MASKED_KEY, PARAMS_KEY, REPLY_KEY
from fl_ext.secagg.client import ClientSession
from fl_ext.secagg.encoding import SecAggEncoding
from fl_ext.secagg.packing import pack, unpack
from fl_ext.secagg.prg import prg_bytes_per_second
from fl_ext.secagg.server import SEALED_BYTES, ServerSession, threshold_for
from fl_ext.secagg.wire import (
    SHARE,
    RoundParams,
    pack_ids,
    pack_keys,
    pack_table,
    unpack_ids,
    unpack_keys,
    unpack_table,
)
from flwr_records import array_to_numpy, named_array_record
from simulations.inprocess import flower_like_node_ids
from strategies.secure_aggregation import SecureAggregation
from strategies.secure_rounds import CONFIG_KEY
from strategies.wire import record_wire_bytes

PHASES = ("keys", "shares", "masked", "unmask")
FLOWER_STAGES = {
    "setup": "keys",
    "share_keys": "shares",
    "collect_masked_vectors": "masked",
    "unmask": "unmask",
}
CLIP = 0.1
LEVELS = 127  # int8 range: q in [-127, 127]
FLOWER_QUANT = 2**8 - 1  # Flower's 8-bit range: [-c, c] onto 0..255
FLOWER_MODULUS = 2**32
THRESHOLD = 0.5
FLOWER_BITS_ON_WIRE = 64  # Flower sends its masked vector as int64
N100_UPLOAD_GOAL = 20.0
LIMIT_GOAL = 2.0
FLOWER_ROW_SECONDS = "Flower's workflow takes ~15 min per row at n=100 on this machine"


# ---------------------------------------------------------------- inputs
def make_inputs(n: int, d: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.05, 0.05, d).astype(np.float32) for _ in range(n)]


def dropped_indices(n: int, drop: float) -> list[int]:
    return list(range(round(drop * n)))


# ---------------------------------------------------------------- ours
class _Meter:
    def __init__(self) -> None:
        self.client: defaultdict[str, float] = defaultdict(float)
        self.clients: defaultdict[str, int] = defaultdict(int)
        self.server: defaultdict[str, float] = defaultdict(float)
        self.down: defaultdict[str, int] = defaultdict(int)
        self.up: defaultdict[str, int] = defaultdict(int)


class _Client:
    """One client's handler work on a message, its stored state between messages."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.state: ConfigRecord | None = None

    def _load(self, params: RoundParams) -> ClientSession:
        assert self.state is not None
        session = ClientSession.from_state(dict(self.state))
        assert session.params == params
        return session

    def _store(self, session: ClientSession) -> None:
        self.state = ConfigRecord(session.to_state())

    def keys(self, msg: RecordDict) -> RecordDict:
        config = dict(msg[CONFIG_KEY])
        session = ClientSession.start(self.node, RoundParams.from_bytes(config[PARAMS_KEY]))
        enc, mask = session.advertise()
        self._store(session)
        return RecordDict({REPLY_KEY: ConfigRecord({"enc-pk": enc, "mask-pk": mask})})

    def shares(self, msg: RecordDict) -> RecordDict:
        config = dict(msg[CONFIG_KEY])
        session = self._load(RoundParams.from_bytes(config[PARAMS_KEY]))
        sealed, commit = session.share(unpack_keys(config["secagg-neighbours"]))
        self._store(session)
        out = {"sealed": pack_table(sealed, SEALED_BYTES), "commitment": commit}
        return RecordDict({REPLY_KEY: ConfigRecord(out)})

    def masked(self, msg: RecordDict, update: np.ndarray, seed: int) -> tuple[RecordDict, Any]:
        config = dict(msg[CONFIG_KEY])
        params = RoundParams.from_bytes(config[PARAMS_KEY])
        session = self._load(params)
        encoding = SecAggEncoding.from_config(config)
        sealed = unpack_table(config["secagg-sealed"], SEALED_BYTES)
        words = encoding.encode(update, weight=encoding.weight_of(1), seed=seed)
        masked = session.masked(words, sealed)
        self._store(session)
        record = named_array_record({MASKED_KEY: pack(masked, params.bits)})
        return RecordDict({"arrays": record, "metrics": MetricRecord({})}), words

    def unmask(self, msg: RecordDict) -> RecordDict:
        config = dict(msg[CONFIG_KEY])
        session = self._load(RoundParams.from_bytes(config[PARAMS_KEY]))
        seeds, sks = session.unmask(
            unpack_ids(config["secagg-survivors"]), unpack_ids(config["secagg-dropped"])
        )
        self._store(session)
        out = {"seeds": pack_table(seeds, SHARE), "sks": pack_table(sks, SHARE)}
        return RecordDict({REPLY_KEY: ConfigRecord(out)})


class _Timer:
    """Adds the seconds of a ``with`` block to ``table[phase]``."""

    def __init__(self, table: defaultdict[str, float], phase: str) -> None:
        self.table, self.phase = table, phase

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.table[self.phase] += time.perf_counter() - self.start


def _request(common: dict[str, Any], extra: dict[str, Any]) -> RecordDict:
    return RecordDict({CONFIG_KEY: ConfigRecord({**common, **extra})})


def run_ours(
    vectors: Sequence[np.ndarray], dropped: Sequence[int], *, graph: str, seed: int
) -> dict[str, Any]:
    """One round of fl-ext's SecAgg+ over ``vectors``; ``dropped`` leave after the shares."""
    n, d = len(vectors), int(vectors[0].size)
    secure = SecureAggregation(
        graph=graph, threshold=THRESHOLD, clip_range=CLIP, levels=LEVELS, max_weight=1
    )
    encoding = secure.encoding(size=d, max_clients=n)
    degree = secure.planned_degree(n)
    t = threshold_for(degree, THRESHOLD)
    params = RoundParams(
        round=1, nonce=secrets.token_bytes(16), threshold=t, bits=encoding.bits, size=d + 1
    )
    common = secure.client_config(encoding, params)
    nodes = flower_like_node_ids(n, seed)
    index = {node: i for i, node in enumerate(nodes)}
    gone = {nodes[i] for i in dropped}
    server = ServerSession(
        params=params,
        nodes=list(nodes),
        degree=None if graph == "full" else degree,
        min_survivors=max(t, secure.min_survivors),
        graph_seed=seed,
    )
    clients = {node: _Client(node) for node in nodes}
    meter = _Meter()

    def send(phase: str, requests: dict[int, RecordDict]) -> None:
        meter.down[phase] += sum(record_wire_bytes(r) for r in requests.values())

    def answer(phase: str, node: int, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        meter.client[phase] += time.perf_counter() - start
        meter.clients[phase] += 1
        reply = out[0] if isinstance(out, tuple) else out
        meter.up[phase] += record_wire_bytes(reply)
        return out

    def timed(phase: str) -> Any:
        return _Timer(meter.server, phase)

    # phase 1: keys
    with timed("keys"):
        requests = {node: _request(common, {}) for node in nodes}
    send("keys", requests)
    replies = {m: answer("keys", m, clients[m].keys, requests[m]) for m in nodes}
    with timed("keys"):
        for node, reply in replies.items():
            record = reply[REPLY_KEY]
            assert server.add_keys(node, record["enc-pk"], record["mask-pk"]) is None
        tables = server.close_keys()
    # phase 2: shares
    with timed("shares"):
        requests = {
            m: _request(common, {"secagg-neighbours": pack_keys(tables[m])}) for m in tables
        }
    send("shares", requests)
    replies = {m: answer("shares", m, clients[m].shares, requests[m]) for m in requests}
    with timed("shares"):
        for node, reply in replies.items():
            record = reply[REPLY_KEY]
            sealed = unpack_table(record["sealed"], SEALED_BYTES)
            assert server.add_shares(node, sealed, record["commitment"]) is None
        route = server.close_shares()
    # phase 3: masked (the train message: the model and the shares sealed for the node)
    with timed("masked"):
        model = named_array_record({"w": np.zeros(d, dtype=np.float32)})
        requests = {
            m: RecordDict(
                {
                    "arrays": model,
                    CONFIG_KEY: ConfigRecord(
                        {**common, "secagg-sealed": pack_table(route[m], SEALED_BYTES)}
                    ),
                }
            )
            for m in route
        }
    send("masked", requests)
    words: dict[int, np.ndarray] = {}
    masked_replies: dict[int, RecordDict] = {}
    for m in requests:
        if m in gone:  # dropped after the share phase: never answers
            continue
        masked_replies[m], words[m] = answer(
            "masked", m, clients[m].masked, requests[m], vectors[index[m]], seed + index[m]
        )
    dtype = encoding.dtype
    with timed("masked"):
        for node, reply in masked_replies.items():
            packed = array_to_numpy(reply["arrays"][MASKED_KEY])
            assert server.add_masked(node, unpack(packed, params.bits, d + 1, dtype)) is None
        asks = server.close_masked()
    # phase 4: unmask
    with timed("unmask"):
        requests = {
            m: _request(common, {"secagg-survivors": pack_ids(s), "secagg-dropped": pack_ids(dr)})
            for m, (s, dr) in asks.items()
        }
    send("unmask", requests)
    replies = {m: answer("unmask", m, clients[m].unmask, requests[m]) for m in requests}
    with timed("unmask"):
        for node, reply in replies.items():
            record = reply[REPLY_KEY]
            seeds = unpack_table(record["seeds"], SHARE)
            sks = unpack_table(record["sks"], SHARE)
            assert server.add_unmask(node, seeds, sks) is None
        compute = time.perf_counter()
        total = server.close_unmask()
        mean, weight = encoding.decode(total)
        compute = time.perf_counter() - compute

    survivors = sorted(index[m] for m in server.vectors)
    live = server.live
    kept = set(server.vectors)
    client_masks = [1 + len(live[m]) for m in kept]
    server_masks = len(kept) + sum(len(live[x] & kept) for x in set(live) - kept)
    plain = np.zeros(d + 1, dtype=np.int64)
    for m in kept:
        plain += words[m]
    plain &= encoding.modulus_mask
    return {
        "mean": mean,
        "weight": weight,
        "exact": bool(np.array_equal(total.astype(np.int64), plain)),
        "sum": total,  # the unmasked sum, mod 2^bits
        "plain_sum": plain,  # the survivors' encoded words summed in the clear, mod 2^bits
        "survivors": survivors,
        "meter": meter,
        "bits": encoding.bits,
        "word_bytes": dtype.itemsize,
        "degree": degree,
        "threshold": t,
        "client_masks_mean": float(np.mean(client_masks)),
        "server_masks": server_masks,
        "server_unmask_compute_s": compute,
        "step": CLIP / LEVELS,
    }


# ---------------------------------------------------------------- rows
def _base(impl: str, n: int, d: int, drop: float, dropped: int) -> dict[str, Any]:
    return {"impl": impl, "n": n, "d": d, "drop": drop, "dropped": dropped}


def _phase_fields(
    client: dict[str, float],
    clients: dict[str, int],
    server: dict[str, float],
    down: dict[str, int],
    up: dict[str, int],
    n: int,
) -> dict[str, Any]:
    per = {p: client.get(p, 0.0) / max(clients.get(p, 0), 1) for p in PHASES}
    return {
        "client_s": {p: client.get(p, 0.0) for p in PHASES},
        "client_s_per_client": per,
        "client_mask_s_per_client": per["masked"],
        "client_total_s_per_client": sum(client.get(p, 0.0) for p in PHASES) / n,
        "server_s": {p: server.get(p, 0.0) for p in PHASES},
        "server_unmask_s": server.get("unmask", 0.0),
        "server_total_s": sum(server.get(p, 0.0) for p in PHASES),
        "bytes_down": {p: down.get(p, 0) for p in PHASES},
        "bytes_up": {p: up.get(p, 0) for p in PHASES},
    }


def ours_row(
    vectors: list[np.ndarray],
    drop: float,
    *,
    graph: str,
    seed: int,
    prg_rate: float,
    floor_s: float,
) -> dict[str, Any]:
    n, d = len(vectors), int(vectors[0].size)
    dropped = dropped_indices(n, drop)
    start = time.perf_counter()
    res = run_ours(vectors, dropped, graph=graph, seed=seed)
    wall = time.perf_counter() - start
    meter = res["meter"]
    survivors = res["survivors"]
    reference = np.mean(np.stack([vectors[i] for i in survivors]).astype(np.float64), axis=0)
    row = _base(f"fl-ext {graph}", n, d, drop, len(dropped))
    row |= {
        "graph": graph,
        "survivors": len(survivors),
        "degree": res["degree"],
        "threshold": res["threshold"],
        "bits": res["bits"],
        "word_bytes": res["word_bytes"],
        "total_weight": res["weight"],
    }
    row |= _phase_fields(meter.client, meter.clients, meter.server, meter.down, meter.up, n)
    row["upload_bits_per_param"] = meter.up["masked"] / len(survivors) * 8 / d
    mask_bytes = (d + 1) * res["word_bytes"]
    row["prg_bytes_per_second"] = prg_rate
    row["client_masks_mean"] = res["client_masks_mean"]
    row["server_masks"] = res["server_masks"]
    row["prg_limit_client_s"] = res["client_masks_mean"] * mask_bytes / prg_rate
    row["prg_limit_server_s"] = res["server_masks"] * mask_bytes / prg_rate
    row["x_limit_client"] = row["client_mask_s_per_client"] / row["prg_limit_client_s"]
    row["x_limit_server"] = row["server_unmask_s"] / row["prg_limit_server_s"]
    row["server_unmask_compute_s"] = res["server_unmask_compute_s"]
    row["plain_sum_s"] = floor_s
    row["max_error"] = float(np.abs(res["mean"].astype(np.float64) - reference).max())
    row["step"] = res["step"]
    row["within_step"] = row["max_error"] <= res["step"]
    row["exact"] = "exact" if res["exact"] else "WRONG"
    row["wall_s"] = wall
    row["anchor"] = None
    return row


def flower_row(
    vectors: list[np.ndarray], drop: float, *, seed: int, floor_s: float, skip: str | None
) -> dict[str, Any]:
    n, d = len(vectors), int(vectors[0].size)
    dropped = dropped_indices(n, drop)
    row = _base("flower secagg+", n, d, drop, len(dropped))
    row |= {"bits": FLOWER_BITS_ON_WIRE, "plain_sum_s": floor_s, "exact": "n/a"}
    if skip is not None:
        return row | {"skipped": skip}
    shares, threshold = flower_shares(n)
    if threshold >= shares:  # flower_shares(4) == (3, 3), which Flower refuses: all n shares
        shares = n
    start = time.perf_counter()
    try:
        res = run_flower_secaggplus(
            vectors=vectors,
            num_shares=shares,
            threshold=threshold,
            clipping_range=CLIP,
            quantization_range=FLOWER_QUANT,
            modulus_range=FLOWER_MODULUS,
            drop_after_shares=dropped,
            seed=seed,
        )
    except (FlowerSecAggHaltedError, ValueError) as err:
        return row | {"skipped": f"anchor failed: {type(err).__name__}: {err}"}
    wall = time.perf_counter() - start

    def mapped(values: dict[str, Any]) -> dict[str, Any]:
        return {FLOWER_STAGES[s]: v for s, v in values.items() if s in FLOWER_STAGES}

    ran = {"keys": n, "shares": n, "masked": len(res.survivors), "unmask": len(res.survivors)}
    row |= {
        "survivors": len(res.survivors),
        "num_shares": res.num_shares,
        "threshold": res.threshold,
        "skipped": None,
    }
    row |= _phase_fields(
        mapped(res.client_seconds),
        ran,
        mapped(res.server_seconds),
        mapped(res.bytes_down),
        mapped(res.bytes_up),
        n,
    )
    reference = np.mean(np.stack([vectors[i] for i in res.survivors]).astype(np.float64), axis=0)
    row["upload_bits_per_param"] = res.upload_bits_per_parameter
    row["transport_s"] = sum(res.transport_seconds.values())
    row["max_error"] = float(np.abs(res.aggregate.astype(np.float64) - reference).max())
    row["step"] = quantization_step(CLIP, FLOWER_QUANT)
    row["within_step"] = row["max_error"] <= row["step"]
    row["wall_s"] = wall
    return row


def _compare(ours: dict[str, Any], anchor: dict[str, Any]) -> None:
    """Speed-ups of ours over Flower (Flower's seconds / ours), None where it did not run."""
    ran = anchor.get("skipped") is None
    ours["anchor"] = "ran" if ran else anchor["skipped"]

    def ratio(key: str) -> float | None:
        return anchor[key] / ours[key] if ran and ours[key] > 0 else None

    ours["vs_flower_client"] = ratio("client_total_s_per_client")
    ours["vs_flower_server"] = ratio("server_total_s")
    ours["vs_flower_client_mask"] = ratio("client_mask_s_per_client")
    ours["vs_flower_server_unmask"] = ratio("server_unmask_s")


def skip_reason(n: int, d: int, max_n: int, max_d: int) -> str | None:
    if n > max_n:
        return f"anchor skipped: n={n} > --anchor-max-n={max_n} ({FLOWER_ROW_SECONDS})"
    if d > max_d:
        return (
            f"anchor skipped: d={d} > --anchor-max-d={max_d} (Flower's masking and unmasking "
            "grow with d: its n=50, d=1e5 rows take ~80 s here)"
        )
    return None


# ---------------------------------------------------------------- output
COLUMNS = [
    ("impl", "impl"),
    ("n", "n"),
    ("d", "d"),
    ("drop", "drop"),
    ("bits", "bits"),
    ("upload bits/param", "upload_bits_per_param"),
    ("client mask s/client", "client_mask_s_per_client"),
    ("client total s/client", "client_total_s_per_client"),
    ("server unmask s", "server_unmask_s"),
    ("server total s", "server_total_s"),
    ("PRG-limit client s", "prg_limit_client_s"),
    ("PRG-limit server s", "prg_limit_server_s"),
    ("x limit client", "x_limit_client"),
    ("x limit server", "x_limit_server"),
    ("vs Flower client", "vs_flower_client"),
    ("vs Flower server", "vs_flower_server"),
    ("max error", "max_error"),
    ("exact", "exact"),
    ("plain sum s", "plain_sum_s"),
    ("note", "note"),
]


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.startswith(("vs_flower", "x_limit")):
        return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"
    if key == "max_error":
        return f"{value:.2e}"
    if isinstance(value, float):
        if key == "drop":
            return f"{value:g}"
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _note(row: dict[str, Any]) -> str:
    if row["impl"].startswith("flower"):
        if row.get("skipped"):
            return row["skipped"]
        return f"shares/threshold {row['num_shares']}/{row['threshold']}"
    return f"degree {row['degree']}, threshold {row['threshold']}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [_note(row) if key == "note" else _fmt(key, row.get(key)) for _, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def phase_table(rows: list[dict[str, Any]]) -> str:
    head = ["impl", "n", "d", "drop"]
    head += [f"client {p}" for p in PHASES] + [f"server {p}" for p in PHASES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.get("skipped"):
            continue
        cells = [row["impl"], str(row["n"]), str(row["d"]), f"{row['drop']:g}"]
        cells += [f"{row['client_s_per_client'][p]:.3g}" for p in PHASES]
        cells += [f"{row['server_s'][p]:.3g}" for p in PHASES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ours = [r for r in rows if r["impl"].startswith("fl-ext")]
    out = []

    at100 = [r for r in ours if r["n"] == 100]
    if at100:
        worst = max(at100, key=lambda r: r["upload_bits_per_param"])
        ok = worst["upload_bits_per_param"] <= N100_UPLOAD_GOAL
        detail = (
            f"worst {worst['upload_bits_per_param']:.3f} bits/param "
            f"({worst['impl']}, d={worst['d']}, drop={worst['drop']:g}, {worst['bits']}-bit modulus)"
        )
        status = "PASS" if ok else "FAIL"
    else:
        status, detail = "NOT RUN", "no n=100 row"
    out.append(
        {"goal": f"upload <= {N100_UPLOAD_GOAL:g} bits/param at n=100 (int8 range)",
         "status": status, "detail": detail}
    )  # fmt: skip

    for side, key in (("client masking", "x_limit_client"), ("server unmasking", "x_limit_server")):
        worst = max(ours, key=lambda r, k=key: r[k])
        bad = [r for r in ours if r[key] > LIMIT_GOAL]
        detail = (
            f"worst {worst[key]:.2f}x ({worst['impl']}, n={worst['n']}, d={worst['d']}, "
            f"drop={worst['drop']:g}); {len(bad)} of {len(ours)} rows above {LIMIT_GOAL:g}x"
        )
        if bad:
            detail += ": " + ", ".join(
                f"{r['impl']} n={r['n']} d={r['d']} drop={r['drop']:g} {r[key]:.2f}x" for r in bad
            )
        out.append(
            {"goal": f"{side} within {LIMIT_GOAL:g}x of its PRG limit",
             "status": "FAIL" if bad else "PASS", "detail": detail}
        )  # fmt: skip

    compared = [r for r in ours if r.get("vs_flower_client") is not None]
    if compared:
        slower = [r for r in compared if r["vs_flower_client"] <= 1 or r["vs_flower_server"] <= 1]
        worst_c = min(compared, key=lambda r: r["vs_flower_client"])
        worst_s = min(compared, key=lambda r: r["vs_flower_server"])
        detail = (
            f"{len(compared)} rows with the anchor; smallest speed-up client "
            f"{worst_c['vs_flower_client']:.1f}x ({worst_c['impl']} n={worst_c['n']} "
            f"d={worst_c['d']} drop={worst_c['drop']:g}), server "
            f"{worst_s['vs_flower_server']:.1f}x ({worst_s['impl']} n={worst_s['n']} "
            f"d={worst_s['d']} drop={worst_s['drop']:g})"
        )
        if slower:
            detail += f"; not faster on {len(slower)} rows"
        status = "FAIL" if slower else "PASS"
    else:
        status, detail = "NOT RUN", "the anchor ran on no row"
    out.append(
        {"goal": "faster than Flower (client and server) on every row where the anchor ran",
         "status": status, "detail": detail}
    )  # fmt: skip

    wrong = [r for r in ours if r["exact"] != "exact" or not r["within_step"]]
    out.append(
        {"goal": "correct: integer sum exact and mean within one step (0.1/127)",
         "status": "FAIL" if wrong else "PASS",
         "detail": f"{len(ours) - len(wrong)} of {len(ours)} rows"}
    )  # fmt: skip
    return out


def _sources_digest() -> str:
    """SHA-256 over fl_ext/secagg/*.py as run: which version of the protocol was measured."""
    digest = hashlib.sha256()
    for path in sorted(Path(secagg_package.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return {key: clean(value) for key, value in row.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--d", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--drop", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--anchor-max-n", type=int, default=50)
    parser.add_argument("--anchor-max-d", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="numba threads for encode/pack/unpack (default 1: see the module docstring)",
    )
    args = parser.parse_args(argv)
    before = numba.get_num_threads()
    numba.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        numba.set_num_threads(before)  # main() called in a test leaves numba as it was


def _run(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    sources = _sources_digest()  # before anything runs: the version imported
    prg_rate = prg_bytes_per_second()
    print(
        f"AES-CTR keystream (prg_bytes_per_second, this run): {prg_rate / 1e9:.2f} GB/s; "
        f"numba threads {numba.get_num_threads()}"
    )
    warm = make_inputs(4, 100, args.seed)  # first calls: numba's cached kernels, cipher setup
    for graph in ("plus", "full"):
        run_ours(warm, [0], graph=graph, seed=args.seed)
    flower_row(warm, 0.0, seed=args.seed, floor_s=0.0, skip=None)
    rows: list[dict[str, Any]] = []
    for n in args.n:
        for d in args.d:
            vectors = make_inputs(n, d, args.seed)
            skip = skip_reason(n, d, args.anchor_max_n, args.anchor_max_d)
            for drop in args.drop:
                survivors = vectors[len(dropped_indices(n, drop)) :]
                floor_s = plain_sum_seconds(survivors)
                anchor = flower_row(vectors, drop, seed=args.seed, floor_s=floor_s, skip=skip)
                for graph in ("plus", "full"):
                    row = ours_row(
                        vectors, drop, graph=graph, seed=args.seed, prg_rate=prg_rate,
                        floor_s=floor_s,
                    )  # fmt: skip
                    _compare(row, anchor)
                    rows.append(row)
                    print(
                        f"  {row['impl']:<12} n={n} d={d} drop={drop:g}: {row['wall_s']:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                rows.append(anchor)
                if anchor.get("skipped") is None:
                    print(
                        f"  flower       n={n} d={d} drop={drop:g}: {anchor['wall_s']:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
    elapsed = time.perf_counter() - began
    print()
    print(table(rows))
    print("\nPer phase: client s/client (keys, shares, masked, unmask) | server s (same)\n")
    print(phase_table(rows))
    results = goals(rows)
    print("\nGoals:")
    for goal in results:
        print(f"- {goal['status']}: {goal['goal']} ({goal['detail']})")
    print(f"\nbench wall time {elapsed:.1f}s")
    report = {
        "args": vars(args) | {"json": None if args.json is None else str(args.json)},
        "prg_bytes_per_second": prg_rate,
        "numba_threads": numba.get_num_threads(),
        "secagg_sources_sha256": sources,
        "wall_s": elapsed,
        "rows": [_jsonable(r) for r in rows],
        "goals": results,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
