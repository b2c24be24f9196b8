"""Bytes on the wire, measured on the records Flower actually transfers.

Flower 1.41 sends a message as a tree of content-addressed objects (RecordDict, ArrayRecord,
Array, ArrayChunk...); every object is transferred as its ``deflate()`` bytes. The sum over the
tree is what one recipient downloads (or one sender uploads), before gRPC framing.
"""

from __future__ import annotations

from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def record_wire_bytes(record: RecordDict) -> int:
    """Serialized size of ``record`` and everything nested in it."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())
