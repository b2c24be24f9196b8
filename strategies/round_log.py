"""Per-round counters the strategy fills and the ServerApp sends to tracking."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strategies.stragglers import ClockRound


@dataclass
class RoundLog:
    """What happened in one round: who was asked, who answered, what was rejected, bytes."""

    server_round: int
    selected: list[int] = field(default_factory=list)
    replied: int = 0
    failed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    bytes_down: int = 0
    bytes_up: int = 0
    skipped: str | None = None
    byzantine: int = 0
    eval_selected: int = 0
    eval_replied: int = 0
    eval_failed: int = 0
    eval_rejected: int = 0
    late_drained: int = 0  # replies of earlier rounds that arrived after their round closed
    clock: ClockRound | None = None  # the virtual clock's decisions (simulated heterogeneity)

    def metrics(self) -> dict[str, float]:
        """Flat numeric view for MLflow."""
        out: dict[str, float] = {
            "clients_selected": len(self.selected),
            "clients_replied": self.replied,
            "clients_failed": self.failed,
            "clients_rejected": sum(self.rejected.values()),
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "round_skipped": float(self.skipped is not None),
            "byzantine_in_round": self.byzantine,
            "eval_clients_selected": self.eval_selected,
            "eval_clients_replied": self.eval_replied,
            "eval_clients_rejected": self.eval_rejected,
            "late_replies_drained": self.late_drained,
        }
        for reason, count in self.rejected.items():
            out[f"rejected_{reason}"] = count
        if self.clock is not None:
            out.update(
                clients_dropped=self.clock.dropped,
                clients_late=self.clock.late,
                clients_completed=self.clock.completed,
                straggler_index=self.clock.straggler_index,
            )
            key = "sim_round_s" if self.clock.simulated else "round_close_s"
            out[key] = self.clock.sim_round_s
        return out
