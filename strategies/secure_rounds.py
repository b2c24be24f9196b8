"""The secure-aggregation driver: each round's training as the four phases of SecAgg+.

1. ``query.secagg_keys`` to the sampled nodes: round parameters in, two public keys out;
2. ``query.secagg_shares``: each node's neighbours' keys in, sealed shares and a seed
   commitment out;
3. ``train``: the model, the encoding and the shares sealed for the node in; the masked,
   bit-packed update out (checked by the engine's reply checks, then kept as words);
4. ``query.secagg_unmask``: which neighbours survived and which dropped in, shares out;
   the server removes the masks and decodes the weighted mean.

A node that does not answer a phase in time, answers with an error, or whose reply is
refused, has dropped: up to the threshold the round still unmasks; below it the round is
abandoned before anything is unmasked (model unchanged, reason logged and counted). A reply
of a phase that has closed is drained as late and never used. Federated and centralized
evaluation, checkpoints and metrics are the synchronous driver's.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from fl_ext.secagg.keys import SecAggError
from fl_ext.secagg.server import SEALED_BYTES, SecAggAbort, ServerSession
from fl_ext.secagg.wire import SHARE, pack_ids, pack_keys, pack_table, unpack_table
from strategies.drivers import RunSpec, SyncRounds
from strategies.exchange import exchange
from strategies.wire import record_wire_bytes

if TYPE_CHECKING:
    from fl_ext.secagg.encoding import SecAggEncoding
    from strategies.fedavg import FlExtFedAvg
    from strategies.replies import TrainReply
    from strategies.round import Round
    from strategies.secure_aggregation import SecureAggregation

REPLY_KEY = "secagg"
CONFIG_KEY = "config"
DROPOUT_KEY = "simulate-dropout"  # simulation: the phase at which a node stops answering


class SecAggRounds(SyncRounds):
    """Synchronous rounds whose training is a SecAgg+ exchange (see the module docstring)."""

    provides = frozenset()  # the server never sees an individual update
    label = "the secure-aggregation driver"

    def __init__(self, secure: SecureAggregation) -> None:
        super().__init__()
        self.secure = secure

    def train(
        self, engine: FlExtFedAvg, server_round: int, spec: RunSpec
    ) -> tuple[ArrayRecord | None, MetricRecord | None, dict[str, float]]:
        messages = list(
            engine.configure_train(server_round, spec.result.arrays, spec.train_config, spec.grid)
        )
        rnd = engine.current
        assert rnd is not None
        by_node = {int(m.metadata.dst_node_id): m for m in messages}
        session, encoding = self.secure.open_round(rnd, list(by_node))
        common = self.secure.client_config(encoding, session.params)
        dropouts = {n: _config(m).get(DROPOUT_KEY) for n, m in by_node.items()}
        phases = _Phases(engine, spec, common, dropouts)
        try:
            route = self._setup(phases, session)
        except SecAggAbort as err:
            return self._abandon(engine, server_round, session, str(err))
        train_msgs = [
            _with_config(
                by_node[n], {**common, "secagg-sealed": pack_table(route[n], SEALED_BYTES)}
            )
            for n in sorted(route, key=list(by_node).index)
        ]
        # configure_train counted a model for every sampled node: only these got one, with shares
        rnd.log.bytes_down += sum(record_wire_bytes(m.content) for m in train_msgs) - sum(
            rnd.bytes_down.get(n, 0) for n in by_node
        )
        _, limit = engine.clock_limits(rnd.needed, spec.timeout)
        t0 = time.monotonic()
        trained = exchange(spec.grid, train_msgs, timeout=limit, in_flight=engine.in_flight)
        rnd.reply_seconds = trained.by_node()
        rnd.left_in_flight = trained.left_in_flight
        engine.drained(trained.drained)
        updates, accepted = engine.accept_train(server_round, trained.replies)
        telemetry = phases.telemetry
        telemetry["train_s"] = time.monotonic() - t0
        telemetry["bytes_up_train"] = float(sum(rnd.reply_bytes.values()))
        try:
            mean, weight = self._unmask(phases, session, encoding, accepted)
        except (SecAggAbort, ValueError) as err:
            return self._abandon(engine, server_round, session, str(err), updates, accepted)
        if self.secure.dp is not None:
            mean = self.secure.dp.finish(mean, weight)  # central DP: the server's noise
        rnd.secure_sum = torch.from_numpy(mean)
        telemetry["total_weight"] = float(weight)
        self.secure.spent(rnd, session.survivors["masked"])
        self._telemetry(rnd, session, encoding.size)
        new_arrays, metrics = engine.finish_train(server_round, updates, accepted)
        return new_arrays, metrics, trained.metrics("train_")

    def _setup(self, phases: _Phases, session: ServerSession) -> dict[int, dict[int, bytes]]:
        """Phases 1 and 2: keys, then shares; the shares to route to each kept node."""
        timeouts = self.secure.timeouts
        asked: dict[int, dict[str, Any]] = {n: {} for n in session.nodes}
        for node, record in phases.query("keys", asked, timeouts.keys).items():
            enc, mask = _bytes(record, "enc-pk"), _bytes(record, "mask-pk")
            _refused(node, "keys", session.add_keys(node, enc, mask))
        requests = session.close_keys()
        asked = {n: {"secagg-neighbours": pack_keys(table)} for n, table in requests.items()}
        for node, record in phases.query("shares", asked, timeouts.shares).items():
            try:
                sealed = unpack_table(_bytes(record, "sealed"), SEALED_BYTES)
            except SecAggError as err:
                _refused(node, "shares", str(err))
                continue
            commit = _bytes(record, "commitment")
            _refused(node, "shares", session.add_shares(node, sealed, commit))
        return session.close_shares()

    def _unmask(
        self,
        phases: _Phases,
        session: ServerSession,
        encoding: SecAggEncoding,
        accepted: list[TrainReply],
    ) -> tuple[np.ndarray, int]:
        """Phase 4: the accepted masked inputs unmasked and decoded (mean, total weight)."""
        rnd = phases.engine.current
        assert rnd is not None
        for reply in accepted:
            node = reply.node_id
            _refused(node, "train", session.add_masked(node, rnd.masked[node]))
        unmask = session.close_masked({r.node_id for r in accepted})
        asked = {
            n: {"secagg-survivors": pack_ids(s), "secagg-dropped": pack_ids(d)}
            for n, (s, d) in unmask.items()
        }
        for node, record in phases.query("unmask", asked, self.secure.timeouts.unmask).items():
            try:
                seeds = unpack_table(_bytes(record, "seeds"), SHARE)
                sks = unpack_table(_bytes(record, "sks"), SHARE)
            except SecAggError as err:
                _refused(node, "unmask", str(err))
                continue
            _refused(node, "unmask", session.add_unmask(node, seeds, sks))
        t0 = time.monotonic()
        total = session.close_unmask()
        decoded = encoding.decode(total)
        phases.telemetry["unmask_server_s"] = time.monotonic() - t0
        return decoded

    def _abandon(  # noqa: PLR0917  (the round so far, as far as it got)
        self,
        engine: FlExtFedAvg,
        server_round: int,
        session: ServerSession,
        reason: str,
        updates: torch.Tensor | None = None,
        accepted: list[TrainReply] | None = None,
    ) -> tuple[ArrayRecord | None, MetricRecord | None, dict[str, float]]:
        """Nothing unmasked, the model unchanged; the reason logged and counted."""
        rnd = engine.current
        assert rnd is not None
        rnd.log.skipped = f"secure aggregation abandoned: {reason}"
        rnd.secure_sum = None
        if updates is None:  # the train messages configure_train counted were never sent
            rnd.log.bytes_down -= sum(rnd.bytes_down.values())
        self.secure.rounds_abandoned += 1
        self._telemetry(rnd, session, rnd.spec.size)
        log(WARNING, "Round %d abandoned, global model unchanged: %s", server_round, reason)
        empty = torch.empty((0, rnd.spec.size)) if updates is None else updates
        _, metrics = engine.finish_train(server_round, empty, accepted or [])
        return None, metrics, {}

    @staticmethod
    def _telemetry(rnd: Round, session: ServerSession, size: int) -> None:
        out = rnd.secure
        assert out is not None
        for phase, count in session.survivors.items():
            out[f"survivors_{phase}"] = float(count)
        out["liars"] = float(len(session.liars))
        survivors = max(session.survivors.get("masked", 0), 1)
        up = out.get("bytes_up_train", 0.0)
        out["upload_bits_per_param"] = 8.0 * up / survivors / max(size, 1)


class _Phases:
    """The query exchanges of one round: build, send, collect the valid records."""

    def __init__(
        self,
        engine: FlExtFedAvg,
        spec: RunSpec,
        common: dict[str, Any],
        dropouts: dict[int, Any],
    ) -> None:
        rnd = engine.current
        assert rnd is not None and rnd.secure is not None
        self.engine, self.spec, self.telemetry = engine, spec, rnd.secure
        self.common, self.dropouts = common, dropouts

    def query(
        self, phase: str, per_node: dict[int, dict[str, Any]], timeout: float
    ) -> dict[int, ConfigRecord]:
        """``query.secagg_<phase>`` to each node; the answering nodes' reply records."""
        rnd = self.engine.current
        assert rnd is not None
        messages = []
        for node, extra in per_node.items():
            config = {**self.common, **extra}
            if self.dropouts.get(node) is not None:
                config[DROPOUT_KEY] = self.dropouts[node]
            content = RecordDict({CONFIG_KEY: ConfigRecord(config)})
            messages.append(
                Message(content, dst_node_id=node, message_type=f"query.secagg_{phase}")
            )
        down = sum(record_wire_bytes(m.content) for m in messages)
        t0 = time.monotonic()
        got = exchange(self.spec.grid, messages, timeout=timeout, in_flight=self.engine.in_flight)
        self.engine.drained(got.drained)
        out: dict[int, ConfigRecord] = {}
        up = 0
        for reply in got.replies:
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                log(
                    INFO, "\t> node %d dropped in the %s phase: %s", node, phase, reply.error.reason
                )
                continue
            up += record_wire_bytes(reply.content)
            record = reply.content.config_records.get(REPLY_KEY)
            if record is None:
                _refused(node, phase, f"reply carries no '{REPLY_KEY}' ConfigRecord")
                continue
            out[node] = record
        rnd.log.bytes_down += down
        rnd.log.bytes_up += up
        self.telemetry[f"{phase}_s"] = time.monotonic() - t0
        self.telemetry[f"bytes_down_{phase}"] = float(down)
        self.telemetry[f"bytes_up_{phase}"] = float(up)
        return out


def _config(msg: Message) -> dict[str, Any]:
    records = msg.content.config_records
    return dict(records[CONFIG_KEY]) if CONFIG_KEY in records else {}


def _bytes(record: ConfigRecord, key: str) -> bytes:
    value = record.get(key)
    return value if isinstance(value, bytes) else b""


def _refused(node: int, phase: str, reason: str | None) -> None:
    if reason is not None:
        log(WARNING, "\t> %s reply from node %d refused: %s", phase, node, reason)


def _with_config(msg: Message, extra: dict[str, Any]) -> Message:
    """A copy of ``msg`` with more config entries (its arrays shared, not copied)."""
    content = RecordDict(dict(msg.content.items()))
    content[CONFIG_KEY] = ConfigRecord({**_config(msg), **extra})
    return Message(
        content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type
    )
