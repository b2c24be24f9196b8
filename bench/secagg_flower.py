"""The anchor of ``python -m bench.secagg``: Flower's own SecAgg+, run in process.

    python -m bench.secagg_flower                      # n in {10, 50}, d = 1e5, 0% and 20% drops
    python -m bench.secagg_flower --n 10 50 100 --d 100000 --drop 0 0.2
    python -m bench.secagg_flower --check              # the quick self-check (n=5, d=1000)

:func:`run_flower_secaggplus` runs Flower's real SecAgg+ for one round, unmodified: the server
side is ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` on a ``LegacyContext`` with
``flwr.server.strategy.FedAvg``, the client side a legacy ``ClientApp(client_fn=...)`` (a
``NumPyClient``) with ``secaggplus_mod``, the only API Flower's SecAgg+ supports. There is no
Ray and no SuperLink: the messages travel over :class:`simulations.inprocess.InProcessGrid`
(wire copies, Flower-like random 64-bit node ids). Client ``i``'s fit returns
``initial + vectors[i]`` with ``num_examples = 1`` and the initial parameters are zeros, so
FedAvg's result is the mean of the surviving clients' vectors, as Flower's quantization leaves it.

What is measured, per SecAgg+ stage (``setup``, ``share_keys``, ``collect_masked_vectors``,
``unmask``; the stage is the one the server wrote into the message's ``secaggplus_configs``):

* ``client_seconds``: time inside the clients' ``secaggplus_mod`` (an outer mod times it),
  summed over clients; ``client_fit_seconds`` is the part of it in the NumPyClient's fit.
* ``server_seconds``: the workflow's wall time for the stage minus the time spent in the grid's
  delivery of that stage's messages (the clients plus the in-process transport: wire copies and
  the byte counts); the transport alone is ``transport_seconds``.
* ``bytes_down`` / ``bytes_up``: ``record_wire_bytes`` of every message the server pushes and
  of every reply with content, i.e. Flower's serialized RecordDict sizes.

Dropouts: a client in ``drop_after_shares`` answers ``setup`` and ``share_keys`` and then goes
away: from ``collect_masked_vectors`` on the grid does not deliver to it and answers in its
place with the error reply a SuperLink gives for a node that stopped heartbeating
(``ErrorCode.NODE_UNAVAILABLE``). The workflow drops every node whose reply has an error from
its active set, so the dropped clients' key shares are used to remove their pairwise masks.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.compat import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from simulations.inprocess import InProcessGrid
from strategies.wire import record_wire_bytes

STAGES = Stage.all()  # ("setup", "share_keys", "collect_masked_vectors", "unmask")
OTHER = "other"  # a message without a SecAgg+ stage (none in one round with initial params)
DROPPED_REASON = "Node unavailable: dropped after share_keys (bench.secagg_flower)"


class FlowerSecAggHaltedError(RuntimeError):
    """Flower's workflow stopped before unmasking (too few nodes left for the threshold)."""


@dataclass
class FlowerSecAggResult:
    """One round of Flower's SecAgg+; dicts are keyed by SecAgg+ stage."""

    aggregate: np.ndarray  # FedAvg's parameters: mean of the survivors' vectors, dequantized
    client_seconds: dict[str, float]  # inside the clients' secaggplus_mod, summed over clients
    server_seconds: dict[str, float]  # the workflow's own time, clients and transport excluded
    bytes_down: dict[str, int]  # serialized server -> client messages, all clients
    bytes_up: dict[str, int]  # serialized client -> server replies, all clients
    upload_bits_per_parameter: float  # masked-vector reply bytes per survivor * 8 / d
    survivors: list[int]  # indices into ``vectors`` whose masked vector was aggregated
    transport_seconds: dict[str, float] = field(default_factory=dict)  # in-process wire copies
    client_fit_seconds: float = 0.0  # part of client_seconds in the NumPyClient's fit
    wall_seconds: float = 0.0  # the whole DefaultWorkflow call
    num_shares: int = 0  # as the workflow used them (after its own adjustments)
    threshold: int = 0


@dataclass
class _Meter:
    client: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    client_fit: float = 0.0
    off_server: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    stage_wall: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes_down: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_up: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    survivors: set[int] = field(default_factory=set)
    completed: bool = False
    num_shares: int = 0
    threshold: int = 0


def _stage_of(msg: Message) -> str:
    if not msg.has_content() or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return OTHER
    return str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, OTHER))


class _VectorClient(NumPyClient):
    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple:
        return [parameters[0] + self.vector], 1, {}


def _client_app(vectors: Sequence[np.ndarray], meter: _Meter) -> ClientApp:
    def client_fn(context: Context) -> Any:
        return _VectorClient(vectors[int(context.node_config["partition-id"])]).to_client()

    def time_secaggplus(msg: Message, ctxt: Context, call_next: Callable) -> Message:
        stage = _stage_of(msg)  # read before secaggplus_mod pops it
        start = time.perf_counter()
        try:
            return call_next(msg, ctxt)
        finally:
            meter.client[stage] += time.perf_counter() - start

    def time_fit(msg: Message, ctxt: Context, call_next: Callable) -> Message:
        start = time.perf_counter()
        try:
            return call_next(msg, ctxt)
        finally:
            meter.client_fit += time.perf_counter() - start

    return ClientApp(client_fn=client_fn, mods=[time_secaggplus, secaggplus_mod, time_fit])


class _SecAggGrid(InProcessGrid):
    """InProcessGrid that meters bytes and delivery time per stage and drops some nodes."""

    def __init__(
        self, client_app: ClientApp, num_nodes: int, *, drop: set[int], meter: _Meter, seed: int
    ) -> None:
        super().__init__(client_app, num_nodes, id_seed=seed)
        self.drop = drop
        self.meter = meter

    def _deliver(self, msg: Message) -> Message:
        start = time.perf_counter()
        stage = _stage_of(msg)
        try:
            self.meter.bytes_down[stage] += record_wire_bytes(msg.content)
            pid = self.partition.get(msg.metadata.dst_node_id)
            gone = stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK) and pid in self.drop
            if gone:  # as a SuperLink answers for a node that stopped heartbeating
                return Message(Error(ErrorCode.NODE_UNAVAILABLE, DROPPED_REASON), reply_to=msg)
            reply = super()._deliver(msg)
            if not reply.has_error():
                self.meter.bytes_up[stage] += record_wire_bytes(reply.content)
                if stage == Stage.COLLECT_MASKED_VECTORS and pid is not None:
                    self.meter.survivors.add(pid)
            return reply
        finally:
            self.meter.off_server[stage] += time.perf_counter() - start


class _TimedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAggPlusWorkflow, unchanged, with each stage's wall time recorded."""

    def __init__(self, meter: _Meter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meter = meter

    def _timed(self, stage: str, step: Callable[..., bool], *args: Any) -> bool:
        start = time.perf_counter()
        try:
            return step(*args)
        finally:
            self.meter.stage_wall[stage] += time.perf_counter() - start

    def setup_stage(self, grid: Any, context: Any, state: Any) -> bool:
        ok = self._timed(Stage.SETUP, super().setup_stage, grid, context, state)
        self.meter.num_shares, self.meter.threshold = state.num_shares, state.threshold
        return ok

    def share_keys_stage(self, grid: Any, context: Any, state: Any) -> bool:
        return self._timed(Stage.SHARE_KEYS, super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid: Any, context: Any, state: Any) -> bool:
        step = super().collect_masked_vectors_stage
        return self._timed(Stage.COLLECT_MASKED_VECTORS, step, grid, context, state)

    def unmask_stage(self, grid: Any, context: Any, state: Any) -> bool:
        ok = self._timed(Stage.UNMASK, super().unmask_stage, grid, context, state)
        self.meter.completed = ok
        return ok


@contextlib.contextmanager
def _flower_quiet_and_seeded(seed: int, level: int = logging.WARNING) -> Iterator[None]:
    """Flower's INFO logs off; the global RNGs Flower uses (stochastic rounding: numpy's,
    the neighbour shuffle: ``random``) seeded, and restored afterwards. Keys stay random."""
    logger = logging.getLogger("flwr")
    old_level, np_state, py_state = logger.level, np.random.get_state(), random.getstate()
    logger.setLevel(level)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        np.random.set_state(np_state)
        random.setstate(py_state)


def run_flower_secaggplus(
    *,
    vectors: list[np.ndarray],
    num_shares: int,
    threshold: int,
    clipping_range: float,
    quantization_range: int,
    modulus_range: int,
    drop_after_shares: Sequence[int] = (),
    seed: int = 0,
    max_weight: float = 1.0,
) -> FlowerSecAggResult:
    """One round of Flower's SecAgg+ over ``len(vectors)`` in-process clients.

    ``max_weight`` is Flower's (default 1000 there): each client scales its weight by
    ``round(num_examples / max_weight * quantization_range)``, so with weight 1 and a small
    ``quantization_range`` Flower's default rounds the weight to 0; here every weight is 1.
    Raises :class:`FlowerSecAggHaltedError` if the workflow halts before unmasking.
    """
    n = len(vectors)
    if n < 2:
        raise ValueError(f"Flower's SecAgg+ needs at least 2 clients, got {n}")
    dim = int(np.asarray(vectors[0]).size)
    vecs = [np.asarray(v, dtype=np.float32).reshape(dim) for v in vectors]
    drop = {int(i) for i in drop_after_shares}
    if not drop <= set(range(n)):
        raise ValueError(f"drop_after_shares must index vectors, got {sorted(drop)}")

    meter = _Meter()
    grid = _SecAggGrid(_client_app(vecs, meter), n, drop=drop, meter=meter, seed=seed)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_evaluate_clients=0,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
        fit_metrics_aggregation_fn=lambda _metrics: {},  # else Flower warns every round
    )
    server_context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    context = LegacyContext(
        context=server_context, config=ServerConfig(num_rounds=1), strategy=strategy
    )
    workflow = DefaultWorkflow(
        fit_workflow=_TimedSecAggPlusWorkflow(
            meter,
            num_shares=num_shares,
            reconstruction_threshold=threshold,
            max_weight=max_weight,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_range=modulus_range,
            timeout=None,
        )
    )
    with _flower_quiet_and_seeded(seed):
        start = time.perf_counter()
        workflow(grid, context)
        wall = time.perf_counter() - start
    if not meter.completed:
        raise FlowerSecAggHaltedError(
            f"SecAgg+ halted (n={n}, dropped={len(drop)}, shares={meter.num_shares}, "
            f"threshold={meter.threshold})"
        )
    params = compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
    )
    aggregate = parameters_to_ndarrays(params)[0].reshape(dim)

    stages = [s for s in (*STAGES, OTHER) if s in meter.off_server or s in meter.stage_wall]
    client = {s: meter.client.get(s, 0.0) for s in stages}
    server = {
        s: max(meter.stage_wall.get(s, 0.0) - meter.off_server.get(s, 0.0), 0.0) for s in stages
    }
    transport = {s: max(meter.off_server.get(s, 0.0) - client[s], 0.0) for s in stages}
    survivors = sorted(meter.survivors)
    masked_up = meter.bytes_up.get(Stage.COLLECT_MASKED_VECTORS, 0)
    return FlowerSecAggResult(
        aggregate=aggregate,
        client_seconds=client,
        server_seconds=server,
        bytes_down={s: meter.bytes_down.get(s, 0) for s in stages},
        bytes_up={s: meter.bytes_up.get(s, 0) for s in stages},
        upload_bits_per_parameter=masked_up / max(len(survivors), 1) * 8 / dim,
        survivors=survivors,
        transport_seconds=transport,
        client_fit_seconds=meter.client_fit,
        wall_seconds=wall,
        num_shares=meter.num_shares,
        threshold=meter.threshold,
    )


def plain_sum_seconds(vectors: Sequence[np.ndarray], repeats: int = 5) -> float:
    """The floor: best-of-``repeats`` seconds of ``np.sum`` over the stacked vectors."""
    stacked = np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.sum(stacked, axis=0)
        best = min(best, time.perf_counter() - start)
    return best


def flower_shares(n: int) -> tuple[int, int]:
    """``(num_shares, threshold)`` used here: n-1 shares (n when n-1 is even: Flower wants an
    odd count unless it equals n), threshold n//2+1. Flower's workflow has no defaults."""
    shares = n - 1 if (n - 1) % 2 == 1 else n
    return shares, n // 2 + 1


def quantization_step(clipping_range: float, quantization_range: int) -> float:
    """One step of Flower's quantizer: [-c, c] onto the integers 0..quantization_range."""
    return 2 * clipping_range / quantization_range


def _vectors(n: int, d: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, d).astype(np.float32) for _ in range(n)]


def measure(n: int, d: int, drop_fraction: float, *, seed: int = 0, **kw: Any) -> dict[str, Any]:
    """One benchmark row: Flower SecAgg+ vs the plain mean of the survivors."""
    vectors = _vectors(n, d, seed)
    drop = sorted(
        np.random.default_rng(seed + 1).choice(n, round(drop_fraction * n), replace=False)
    )
    shares, threshold = flower_shares(n)
    params = {"clipping_range": 1.0, "quantization_range": 2**8 - 1, "modulus_range": 2**32}
    params.update(kw)
    res = run_flower_secaggplus(
        vectors=vectors,
        num_shares=shares,
        threshold=threshold,
        drop_after_shares=drop,
        seed=seed,
        **params,
    )
    plain = np.mean(np.stack([vectors[i] for i in res.survivors]), axis=0)
    err = np.abs(res.aggregate - plain)
    return {
        "n": n,
        "d": d,
        "dropped": len(drop),
        "survivors": len(res.survivors),
        "shares/threshold": f"{res.num_shares}/{res.threshold}",
        "client s": sum(res.client_seconds.values()),
        "client s / client": sum(res.client_seconds.values()) / n,
        "server s": sum(res.server_seconds.values()),
        "server unmask s": res.server_seconds.get(Stage.UNMASK, 0.0),
        "transport s": sum(res.transport_seconds.values()),
        "wall s": res.wall_seconds,
        "plain sum s": plain_sum_seconds(vectors),
        "up B / client": sum(res.bytes_up.values()) / n,
        "down B / client": sum(res.bytes_down.values()) / n,
        "upload bits/param": res.upload_bits_per_parameter,
        "max |err|": float(err.max()),
        "rms err": float(np.sqrt(np.mean(err**2))),
        "step": quantization_step(params["clipping_range"], params["quantization_range"]),
        "result": res,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _self_check() -> None:
    for drop in ((), (1,)):
        vectors = _vectors(5, 1000, 0)
        res = run_flower_secaggplus(
            vectors=vectors,
            num_shares=5,
            threshold=3,
            clipping_range=1.0,
            quantization_range=2**8 - 1,
            modulus_range=2**32,
            drop_after_shares=drop,
        )
        plain = np.mean(np.stack([vectors[i] for i in res.survivors]), axis=0)
        err = float(np.abs(res.aggregate - plain).max())
        assert res.survivors == [i for i in range(5) if i not in drop], res.survivors
        assert err <= quantization_step(1.0, 2**8 - 1), err
        print(f"drop={drop}: survivors={res.survivors} max|err|={err:.4g} ok")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--d", type=int, nargs="+", default=[100_000])
    parser.add_argument("--drop", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--quantization-range", type=int, default=2**8 - 1)
    parser.add_argument("--check", action="store_true", help="run the quick self-check only")
    args = parser.parse_args(argv)
    if args.check:
        _self_check()
        return
    rows = [
        measure(n, d, f, quantization_range=args.quantization_range)
        for n in args.n
        for d in args.d
        for f in args.drop
    ]
    cols = [c for c in rows[0] if c != "result"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    for row in rows:
        res = row["result"]
        print(f"\nn={row['n']} d={row['d']} dropped={row['dropped']}: per stage")
        for stage in res.client_seconds:
            print(
                f"  {stage:<24} client {res.client_seconds[stage]:8.3f}s "
                f"server {res.server_seconds[stage]:8.3f}s "
                f"transport {res.transport_seconds[stage]:7.3f}s "
                f"down {res.bytes_down[stage]:>12,}B up {res.bytes_up[stage]:>12,}B"
            )


if __name__ == "__main__":
    main()
