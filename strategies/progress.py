"""What a user reads on the console: one line per round, one summary at the end.

Built from the round's flat metrics (the same dict tracking gets), so the console and MLflow
never disagree. Figures that do not apply to a run (epsilon without DP, late replies without
a deadline, rejections when there were none) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MB = 1e6


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def epsilon_of(m: dict[str, float]) -> float | None:
    """The epsilon a round's metrics report (client-level, else the worst client's)."""
    for key in ("dp_epsilon_client_level", "dp_epsilon_sample_level_max"):
        if key in m:
            return float(m[key])
    return None


# replies a round could not use, as the round line and the summary count them
PROBLEMS = ("clients_rejected", "clients_failed", "clients_late", "clients_dropped")


def _problems(m: dict[str, float]) -> list[str]:
    return [f"{int(m[k])} {k.removeprefix('clients_')}" for k in PROBLEMS if m.get(k)]


def progress_line(m: dict[str, float], *, eta_s: float | None = None) -> str:
    """``test acc 0.9610 loss 0.1450 | train loss 0.0955 | clients 10/10 | ... | ETA 9s``."""
    parts = []
    if "test_accuracy" in m:
        parts.append(
            f"test acc {m['test_accuracy']:.4f} loss {m.get('test_loss', float('nan')):.4f}"
        )
    if "train_loss" in m:
        parts.append(f"train loss {m['train_loss']:.4f}")
    clients = f"clients {int(m.get('clients_replied', 0))}/{int(m.get('clients_selected', 0))}"
    problems = _problems(m)
    parts.append(clients + (f" ({', '.join(problems)})" if problems else ""))
    eps = epsilon_of(m)
    if eps is not None:
        parts.append(f"eps {eps:.2f}")
    parts.append(f"{m.get('bytes_up', 0) / MB:.2f}/{m.get('bytes_down', 0) / MB:.2f} MB up/down")
    if m.get("round_skipped"):
        parts.append("SKIPPED")
    timing = f"{m.get('round_time_s', 0.0):.2f}s"
    if eta_s is not None:
        timing += f", ETA {duration(eta_s)}"
    parts.append(timing)
    return " | ".join(parts)


@dataclass
class RunSummary:
    """Running totals of one ``start`` call, for the ETA and the closing summary."""

    first_round: int
    num_rounds: int
    rounds: int = 0
    skipped: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    best: tuple[float, int] | None = None  # (test accuracy, round)

    def add(self, server_round: int, m: dict[str, float]) -> None:
        """Account one finished round."""
        self.rounds += 1
        self.skipped += int(bool(m.get("round_skipped")))
        self.seconds += float(m.get("round_time_s", 0.0))
        for key in PROBLEMS:
            self.counts[key] = self.counts.get(key, 0) + int(m.get(key, 0))
        self.last = m
        acc = m.get("test_accuracy")
        if acc is not None and math.isfinite(acc) and (self.best is None or acc > self.best[0]):
            self.best = (float(acc), server_round)

    def eta_s(self, server_round: int) -> float | None:
        """Seconds left at the mean round time so far (None before a round finished)."""
        if not self.rounds:
            return None
        return self.seconds / self.rounds * (self.num_rounds - server_round)

    def line(self, stop_reason: str | None = None) -> str:
        """``10 rounds in 32s: test acc 0.9610 (best 0.9610 in round 10) | ...``."""
        m = self.last
        head = f"{self.rounds} round{'s' if self.rounds != 1 else ''} in {duration(self.seconds)}"
        if self.skipped:
            head += f" ({self.skipped} skipped)"
        parts = [head]
        if "test_accuracy" in m:
            best = f" (best {self.best[0]:.4f} in round {self.best[1]})" if self.best else ""
            parts.append(f"test acc {m['test_accuracy']:.4f}{best}")
        eps = epsilon_of(m)
        if eps is not None:
            parts.append(f"epsilon {eps:.2f} (delta {m.get('dp_delta', float('nan')):g})")
        if "bytes_up_cum" in m:
            parts.append(
                f"{m['bytes_up_cum'] / MB:.1f} MB up, {m.get('bytes_down_cum', 0) / MB:.1f} MB down"
            )
        parts.append(
            ", ".join(f"{v} {k.removeprefix('clients_')}" for k, v in self.counts.items() if v)
            or "no reply rejected"
        )
        if stop_reason:
            parts.append(f"stopped early: {stop_reason}")
        return " | ".join(parts)
