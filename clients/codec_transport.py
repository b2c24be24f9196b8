"""Client side of update compression: decode the broadcast, encode the update.

Keys of the train ConfigRecord: ``codec-up`` (JSON spec of the uplink codec), ``codec-ef``
(error feedback on/off), ``codec-down`` (JSON spec of the broadcast codec, if the server
compressed the global model) and ``codec-seed``. The update sent is ``trained - received``
(what the client actually started from), plus the error-feedback residual, which lives in the
node's ``context.state`` so it survives rounds. Codecs are built through the ``fl_ext``
allowlist: a message cannot make a client import anything else.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context

from fl_ext.codecs import Codec, ErrorFeedback
from fl_ext.params import ParamSpec
from fl_ext.specs import build_from_spec, spec_from_json
from flwr_records import payload_record, record_payload

RESIDUAL_KEY = "codec-residual"


def codec_from_config(config: dict[str, Any], key: str) -> Codec | None:
    """The codec a config entry names, or None when the entry is absent."""
    if key not in config:
        return None
    return build_from_spec(spec_from_json(str(config[key])), Codec)


def spec_of(arrays: list[np.ndarray]) -> ParamSpec:
    """Positional spec of a client's arrays (names are the server's business)."""
    return ParamSpec.of(OrderedDict((str(i), a) for i, a in enumerate(arrays)))


def received_arrays(
    record: ArrayRecord, config: dict[str, Any], template: list[np.ndarray]
) -> list[np.ndarray]:
    """The global model as the client sees it: decoded if the server compressed it."""
    down = codec_from_config(config, "codec-down")
    if down is None:
        return record.to_numpy_ndarrays()
    spec = spec_of(template)
    flat = down.decode(record_payload(record), spec.size)
    return list(spec.unflatten(torch.from_numpy(flat)).values())


def encode_update(
    received: list[np.ndarray], trained: list[np.ndarray], config: dict[str, Any], context: Context
) -> ArrayRecord:
    """``trained - received`` through the uplink codec (with error feedback if asked)."""
    codec = codec_from_config(config, "codec-up")
    assert codec is not None
    spec = spec_of(received)
    named = OrderedDict((str(i), a) for i, a in enumerate(trained))
    base = OrderedDict((str(i), a) for i, a in enumerate(received))
    x = (spec.flatten(named) - spec.flatten(base)).numpy()
    rng = np.random.default_rng([int(config.get("codec-seed", 0)), context.node_id])
    if not bool(config.get("codec-ef", False)):
        return payload_record(codec.encode(x, rng))
    residual = None
    if RESIDUAL_KEY in context.state:
        stored = context.state[RESIDUAL_KEY]
        assert isinstance(stored, ArrayRecord)
        residual = stored["residual"].numpy()
        if residual.shape != x.shape:
            residual = None  # the model changed shape: start afresh
    feedback = ErrorFeedback(residual)
    payload = feedback.encode(codec, x, rng)
    assert feedback.residual is not None
    context.state[RESIDUAL_KEY] = ArrayRecord({"residual": Array(feedback.residual)})
    return payload_record(payload)
