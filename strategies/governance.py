"""Governance stages: FL telemetry every round, and quarantine of suspicious nodes.

:class:`Telemetry` reports what plain metrics miss: per node the update's norm, cosine to the
aggregate, distance to the round's coordinate-wise median, bytes and reply time (one JSON
line per round, ``telemetry/telemetry.jsonl``), per round the drop rate, the straggler tail
and the divergence (``telemetry/*`` metrics and one console line), and every ``pca_every``
rounds a PCA scatter of the round's updates coloured by each node's quarantine state (and, in
simulation, its true Byzantine role).

:class:`Quarantine` flags free-riders (:class:`fl_ext.telemetry.FreeRiderDetector`), scores
every node (:class:`fl_ext.telemetry.SuspicionDetector`) and lets a
:class:`fl_ext.telemetry.QuarantinePolicy` act: warned, quarantined for a TTL (not selected,
its replies left out of the round's aggregate), reinstated, suspended. A round the rollback
stage undid quarantines its most suspicious participants. Every decision, with its reason,
is a line of the audit log (``governance/audit.jsonl``) and part of the checkpoint state.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.supercore import log

from fl_ext.telemetry import (
    Decision,
    FreeRiderDetector,
    QuarantinePolicy,
    SuspicionDetector,
    audit_line,
    node_stats,
    round_summary,
)
from fl_ext.validation import Rejection, RejectReason
from strategies.replies import TrainReply
from strategies.rollback import ROLLED_BACK
from strategies.round import Round
from strategies.stage import Stage


def pca_png(
    updates: torch.Tensor, labels: list[str], title: str
) -> bytes:  # matplotlib imported here: only when a plot is due
    """A 2-D PCA scatter of the rows (exact: eigenvectors of the n x n Gram matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = updates.detach().double()
    x = x - x.mean(dim=0, keepdim=True)
    gram = x @ x.T
    values, vectors = torch.linalg.eigh(gram)
    top = vectors[:, -2:].flip(1) * values[-2:].flip(0).clamp_min(0).sqrt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        ax.scatter(top[idx, 0].numpy(), top[idx, 1].numpy(), label=label, s=30)
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class Telemetry(Stage):
    """Per-node and per-round FL telemetry (see the module docstring)."""

    name: ClassVar[str] = "telemetry"

    def __init__(self, *, pca_every: int | None = 5) -> None:
        if pca_every is not None and pca_every < 1:
            raise ValueError(f"telemetry.pca_every must be >= 1 or null, got {pca_every}")
        self.pca_every = pca_every
        self.truth: Callable[[int], bool] | None = None  # simulation: the true Byzantine role
        self.lines: list[str] = []
        self._pending: dict[str, str | bytes] = {}
        self._seen: tuple[torch.Tensor, list[int]] | None = None  # this round's rows

    def transform(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        """Keep what the server received (before quarantine leaves rows out): its plots."""
        self._seen = (updates, [r.node_id for r in accepted])
        return updates, accepted

    def metrics(self, rnd: Round) -> dict[str, float]:
        seen, self._seen = self._seen, None
        if seen is None or seen[0].shape[0] == 0:
            return {}
        updates, nodes = seen
        stats = node_stats(updates, rnd.aggregate)  # the aggregate the kept rows made
        seconds = [rnd.reply_seconds[n] for n in nodes if n in rnd.reply_seconds]
        by_node = {m.metadata.src_node_id: rnd.reply_bytes.get(id(m), 0) for m in rnd.arrived}
        summary = round_summary(
            stats, reply_seconds=seconds, asked=len(rnd.log.selected),
            answered=min(rnd.log.replied, len(rnd.log.selected)),
        )  # fmt: skip
        rows = [
            {
                "node": str(n), "norm": s.norm, "cos_to_aggregate": s.cosine_to_aggregate,
                "dist_to_center": s.distance_to_center, "bytes": by_node.get(n),
                "reply_s": rnd.reply_seconds.get(n), "status": rnd.status.get(n, "ok"),
                **({"byzantine": self.truth(n)} if self.truth is not None else {}),
            }
            for n, s in zip(nodes, stats, strict=True)
        ]  # fmt: skip
        self.lines.append(json.dumps({"round": rnd.number, "summary": summary, "nodes": rows}))
        self._pending["telemetry/telemetry.jsonl"] = "\n".join(self.lines) + "\n"
        if self.pca_every is not None and rnd.number % self.pca_every == 0 and len(nodes) >= 3:
            labels = [
                rnd.status.get(n, "ok")
                + ("" if self.truth is None else (" byzantine" if self.truth(n) else " honest"))
                for n in nodes
            ]
            self._pending[f"telemetry/pca_round_{rnd.number:04d}.png"] = pca_png(
                updates, labels, f"round {rnd.number}: client updates (PCA)"
            )
        log(
            INFO,
            "\t> telemetry: drop %.0f%%, reply p50/p90/p99 %s s, cos gap mean/max %.2f/%.2f, "
            "norm p50/max %.3g/%.3g",
            100 * summary.get("drop_rate", 0.0),
            "/".join(f"{summary[k]:.2f}" for k in ("reply_s_p50", "reply_s_p90", "reply_s_p99"))
            if "reply_s_p50" in summary
            else "-",
            summary.get("cos_gap_mean", 0.0), summary.get("cos_gap_max", 0.0),
            summary.get("norm_p50", 0.0), summary.get("norm_max", 0.0),
        )  # fmt: skip
        keep = ("drop_rate", "reply_s_p50", "reply_s_p90", "reply_s_p99", "cos_gap_mean",
                "cos_gap_max", "norm_p50", "norm_max", "dist_center_max")  # fmt: skip
        return {f"telemetry_{k}": summary[k] for k in keep if k in summary}

    def artifacts(self) -> dict[str, str | bytes]:
        pending, self._pending = self._pending, {}
        return pending

    def state_dict(self) -> dict[str, Any]:
        return {"lines": list(self.lines)}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.lines = [str(x) for x in state.get("lines", [])]

    def summary(self) -> str:
        return f"telemetry: per-node update statistics, PCA every {self.pca_every} rounds"


class Quarantine(Stage):
    """Free-rider flags and suspicion scores -> warn / quarantine / reinstate / suspend."""

    name: ClassVar[str] = "quarantine"
    requires = frozenset({"individual_updates"})

    def __init__(
        self,
        *,
        policy: QuarantinePolicy,
        detector: SuspicionDetector,
        free_riders: FreeRiderDetector | None = None,
        min_rounds: int = 3,
    ) -> None:
        if not 1 <= min_rounds <= detector.window:
            raise ValueError(
                f"quarantine.min_rounds must be in [1, window={detector.window}], got {min_rounds}"
            )
        self.policy, self.detector, self.free_riders = policy, detector, free_riders
        self.min_rounds = int(min_rounds)
        self.audit: list[str] = []
        self._round_scores: dict[int, float] = {}
        self._decided: list[Decision] = []
        self._pending = False

    def _record(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self.audit.append(audit_line(d))
            level = WARNING if d.action in ("quarantine", "suspend") else INFO
            log(level, "\t> governance: node %d %s (%s)", d.node, d.action, d.reason)
        self._decided += decisions
        self._pending = self._pending or bool(decisions)

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        self._record(self.policy.release(rnd.number))
        for node in nodes:
            rnd.status[node] = self.policy.state(node)
        return [n for n in nodes if not self.policy.is_excluded(n, rnd.number)]

    def eligible_to_evaluate(self, nodes: list[int]) -> list[int]:
        return [n for n in nodes if self.policy.state(n) != "suspended"]

    def check(self, rnd: Round, reply: TrainReply) -> Rejection | None:
        if self.policy.is_excluded(reply.node_id, rnd.number):
            return Rejection(RejectReason.QUARANTINED, "node is quarantined: reply ignored")
        return None

    def transform(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        if not accepted:
            return updates, accepted
        nodes = [r.node_id for r in accepted]
        flags = self.free_riders.flags(nodes, updates) if self.free_riders is not None else {}
        scores = self.detector.update(nodes, updates)
        # a score acts once it averages min_rounds rounds: one round's z alone would quarantine
        # an honest node in about a quarter of all-honest rounds of 13 nodes (measured)
        self._round_scores = {
            n: s for n, s in scores.items() if self.detector.rounds(n) >= self.min_rounds
        }
        self._record(self.policy.decide(rnd.number, self._round_scores, flags))
        for node in nodes:
            rnd.status[node] = self.policy.state(node)
        keep = [i for i, n in enumerate(nodes) if not self.policy.is_excluded(n, rnd.number)]
        if len(keep) == len(nodes):
            return updates, accepted
        rnd.log.rejected["quarantined"] += len(nodes) - len(keep)
        index = torch.tensor(keep, dtype=torch.long)
        return updates[index], [accepted[i] for i in keep]

    def after_round(self, server_round: int, metrics: dict[str, float]) -> str | None:
        if metrics.get(ROLLED_BACK) and self._round_scores:
            suspects = [n for n, s in self._round_scores.items() if s >= self.policy.warn_at]
            if not suspects:
                suspects = [max(self._round_scores, key=self._round_scores.__getitem__)]
            reason = f"took part in rolled-back round {server_round}"
            self._record(self.policy.decide(server_round, {}, dict.fromkeys(suspects, reason)))
        states = [r.state for r in self.policy.nodes.values()]
        metrics["clients_quarantined"] = float(states.count("quarantined"))
        metrics["clients_suspended"] = float(states.count("suspended"))
        metrics["clients_warned"] = float(states.count("warned"))
        return None

    def artifacts(self) -> dict[str, str | bytes]:
        if not self._pending:
            return {}
        self._pending = False
        return {"governance/audit.jsonl": "\n".join(self.audit) + "\n"}

    def decisions(self) -> list[Decision]:
        """Every decision so far in this process (the audit log has them all)."""
        return list(self._decided)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "policy": self.policy.state_dict(),
            "detector": self.detector.state_dict(),
            "audit": list(self.audit),
        }
        if self.free_riders is not None:
            state.update({f"fr_{k}": v for k, v in self.free_riders.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.policy.load_state_dict(state["policy"])
        self.detector.load_state_dict(state["detector"])
        self.audit = [str(x) for x in state.get("audit", [])]
        if self.free_riders is not None:
            saved = {k[3:]: np.asarray(v) for k, v in state.items() if k.startswith("fr_")}
            self.free_riders.load_state_dict(saved)

    def summary(self) -> str:
        p = self.policy
        return (
            f"quarantine: warn at {p.warn_at:g}, quarantine at {p.quarantine_at:g} for "
            f"{p.ttl_rounds} rounds, suspend after {p.suspend_after}"
        )
