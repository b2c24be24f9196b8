"""Per-node history for selection: participation, outcomes, utility, speed.

Updated only for the nodes a round touched (O(selected) per round); a node never seen has
no record until it is selected. Reported figures are hints from clients: the strategy
validates them before they get here (finite, non-negative).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

_EWMA = 0.5  # weight of the newest duration in the running estimate


@dataclass
class NodeRecord:
    """What the server knows about one node."""

    selected: int = 0
    succeeded: int = 0
    failed: int = 0
    last_round: int = 0  # last round its update was used
    utility: float | None = None  # Oort's statistical utility: examples x loss
    num_examples: int | None = None
    duration_s: float | None = None  # running estimate of its round time

    @property
    def reliability(self) -> float:
        """Share of selections that produced a valid update (1 when never selected)."""
        return 1.0 if self.selected == 0 else self.succeeded / self.selected


class ClientRegistry:
    """Records keyed by node id."""

    def __init__(self) -> None:
        self.records: dict[int, NodeRecord] = {}

    def get(self, node: int) -> NodeRecord | None:
        return self.records.get(node)

    def _record(self, node: int) -> NodeRecord:
        return self.records.setdefault(node, NodeRecord())

    def on_selected(self, nodes: list[int]) -> None:
        for n in nodes:
            self._record(n).selected += 1

    def on_result(
        self,
        node: int,
        server_round: int,
        *,
        loss: float | None,
        num_examples: int,
        duration_s: float | None,
    ) -> None:
        """A valid update arrived: refresh utility (when the client reported a loss) and speed."""
        if not ((loss is None or loss >= 0) and num_examples >= 1):
            raise ValueError(f"loss must be >= 0 and num_examples >= 1, got {loss}, {num_examples}")
        r = self._record(node)
        r.succeeded += 1
        r.last_round = server_round
        r.num_examples = num_examples
        if loss is not None:
            r.utility = num_examples * loss
        if duration_s is not None:
            if not duration_s >= 0:
                raise ValueError(f"duration must be >= 0, got {duration_s}")
            r.duration_s = (
                duration_s
                if r.duration_s is None
                else _EWMA * duration_s + (1 - _EWMA) * r.duration_s
            )

    def on_duration(self, node: int, duration_s: float) -> None:
        """A round time observed without a usable update (a late reply): speed still counts."""
        if not duration_s >= 0:
            raise ValueError(f"duration must be >= 0, got {duration_s}")
        r = self._record(node)
        r.duration_s = (
            duration_s if r.duration_s is None else _EWMA * duration_s + (1 - _EWMA) * r.duration_s
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-able records (node ids as strings: JSON keys)."""
        return {str(node): asdict(r) for node, r in self.records.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.records = {int(node): NodeRecord(**fields) for node, fields in state.items()}

    def on_failure(self, node: int) -> None:
        """Selected but no valid update (error, rejection, no reply)."""
        self._record(node).failed += 1
