"""The run's record of its data: the server's dataset and every client's data version.

Logged as MLflow dataset inputs (``evaluation``: the server's held-out split; ``training``:
each client's partition, by its SHA-256 and size, as the clients reported them) as soon as
they are known, and summarised in run and registry tags (``dataset_version``,
``client_data``), so a run that used other data is visible in ``simulations.compare``.
"""

from __future__ import annotations

import hashlib

from fl_ext.tracking.base import DatasetRecord
from simulations.build import Built


def log_server_dataset(built: Built) -> None:
    """The server's dataset as the run's evaluation input, and its version as a run tag."""
    split = built.split
    built.tracker.log_datasets(
        [
            DatasetRecord(
                name=split.name,
                digest=split.content_hash,
                source=split.provenance.get("source", f"fl-ext:{split.name}"),
                context="evaluation",
                profile={"test_examples": len(split.test), **dict(split.provenance)},
            )
        ]
    )
    built.tracker.set_tags({"dataset_version": split.version})


def log_client_data(built: Built) -> None:
    """Client data versions first seen since the last call (none: nothing logged)."""
    new = built.data_versions.take_new()
    if not new:
        return
    source = built.split.provenance.get("source", f"fl-ext:{built.split.name}")
    built.tracker.log_datasets(
        [
            DatasetRecord(
                name=f"{built.split.name}-partition",
                digest=digest,
                source=source,
                profile={"node": str(node), "examples": size},
            )
            for node, (digest, size) in sorted(new.items())
        ]
    )
    built.tracker.set_tags({"client_data": client_data_tag(built)})


def client_data_tag(built: Built) -> str:
    """``<clients> clients, <examples> examples, sha256:<digest of the sorted hashes>``."""
    versions = built.data_versions.versions
    joined = "".join(sorted(h for h, _ in versions.values()))
    digest = hashlib.sha256(joined.encode()).hexdigest()[:12]
    examples = sum(size for _, size in versions.values())
    return f"{len(versions)} clients, {examples} examples, sha256:{digest}"
