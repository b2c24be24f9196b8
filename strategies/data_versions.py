"""Which data version every client learned from: recorded from its replies, never its data.

fl-ext clients report the SHA-256 of their partition and its size with every reply
(``client-info``); the federated-statistics phase reports the same. This stage keeps the
latest per node, notes a node whose data changed during the run (logged and counted as
``data_changed``), and hands what is new to the tracker (MLflow dataset inputs) after each
round. Its state is checkpointed, so a resumed run keeps the record.
"""

from __future__ import annotations

from logging import WARNING
from typing import Any

from flwr.app import Message
from flwr.supercore import log

from fl_ext.validation import Rejection
from strategies.replies import reported_data_version
from strategies.round import Round
from strategies.stage import Stage


class DataVersions(Stage):
    """Per node ``(partition SHA-256, examples)``; see the module docstring."""

    name = "data_versions"

    def __init__(self) -> None:
        self.versions: dict[int, tuple[str, int]] = {}
        self.changed = 0
        self._new: dict[int, tuple[str, int]] = {}

    def check_message(self, rnd: Round | None, msg: Message) -> Rejection | None:
        found = reported_data_version(msg)
        if isinstance(found, Rejection) or found is None:
            return found
        self.record(int(msg.metadata.src_node_id), found)
        return None

    def record(self, node: int, version: tuple[str, int]) -> None:
        """Note ``node``'s data version (a change is logged and counted)."""
        old = self.versions.get(node)
        if old == version:
            return
        if old is not None:
            self.changed += 1
            log(
                WARNING,
                "\t> node %d's data changed during the run: %s (%d examples) -> %s (%d)",
                node, old[0][:12], old[1], version[0][:12], version[1],
            )  # fmt: skip
        self.versions[node] = version
        self._new[node] = version

    def take_new(self) -> dict[int, tuple[str, int]]:
        """Versions first seen (or changed) since the last call: what the tracker logs."""
        new, self._new = self._new, {}
        return new

    def metrics(self, rnd: Round) -> dict[str, float]:
        out = {"data_versions": float(len(set(self.versions.values())))}
        if self.changed:
            out["data_changed"] = float(self.changed)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "versions": {str(n): list(v) for n, v in self.versions.items()},
            "changed": self.changed,
        }

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.versions = {int(n): (str(v[0]), int(v[1])) for n, v in state["versions"].items()}
        self.changed = int(state.get("changed", 0))
        # logged again: a rollback is a new MLflow run (a resumed one: MLflow keeps one copy)
        self._new = dict(self.versions)
