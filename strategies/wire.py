"""Bytes on the wire, measured on the records Flower actually transfers.

Flower 1.41 sends a message as a tree of content-addressed objects (RecordDict, ArrayRecord,
Array, ArrayChunk...); every object is transferred as its ``deflate()`` bytes. The sum over the
tree is what one recipient downloads (or one sender uploads), before gRPC framing.
"""

from __future__ import annotations

from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    no_object_id_recompute,
)
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents


def record_wire_bytes(record: RecordDict) -> int:
    """Serialized size of ``record`` and everything nested in it (each object once, by id).

    Object ids are computed once per object, as Flower does when it sends a message (a
    parent's id covers its children's ids: without the context they are hashed again at
    every level).
    """
    with no_object_id_recompute():
        return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())


def wire_copy(record: RecordDict) -> RecordDict:
    """What the receiver of ``record`` gets: deflated to bytes and inflated again."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()}
    copied = inflate_object_from_contents(record.object_id, contents, keep_object_contents=True)
    assert isinstance(copied, RecordDict)
    return copied
