"""What the fl-ext client mods share: the message's config, the model template, error replies."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from logging import ERROR
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Error, Message, MessageType
from flwr.common.constant import ErrorCode
from flwr.supercore import log
from torch import nn

from clients.adapter import CONFIG_KEY
from fl_ext.params import get_weights
from flwr_records import record_to_named

Template = nn.Module | ArrayRecord | Mapping[str, Any]
"""The user's model (or its state dict / an ArrayRecord of it): names, shapes, dtypes, in order."""


def template_arrays(template: Template) -> OrderedDict[str, np.ndarray]:
    """The template as named numpy arrays, in order (copies; only names, shapes, dtypes matter).

    It must list the arrays in the order the server's ArrayRecord does: the order of
    ``model.state_dict()`` when the ServerApp sends ``ArrayRecord(model.state_dict())``.
    """
    if isinstance(template, nn.Module):
        return get_weights(template)
    if isinstance(template, ArrayRecord):
        return record_to_named(template)
    if isinstance(template, Mapping):
        return OrderedDict(
            (str(k), v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in template.items()
        )
    raise TypeError(
        f"template must be an nn.Module, an ArrayRecord or a mapping of arrays, got "
        f"{type(template).__name__}"
    )


def message_config(msg: Message) -> dict[str, Any]:
    """The entries of the message's ``config`` ConfigRecord (empty if it has none)."""
    records = msg.content.config_records
    return dict(records[CONFIG_KEY]) if CONFIG_KEY in records else {}


def is_train(msg: Message) -> bool:
    """A ``train`` or ``train.<action>`` message."""
    return msg.metadata.message_type.split(".", 1)[0] == MessageType.TRAIN


def is_evaluate(msg: Message) -> bool:
    """An ``evaluate`` or ``evaluate.<action>`` message."""
    return msg.metadata.message_type.split(".", 1)[0] == MessageType.EVALUATE


def single_array_record(msg: Message) -> tuple[str, ArrayRecord] | None:
    """The key and record of the message's one ArrayRecord, None if it has not exactly one."""
    records = msg.content.array_records
    if len(records) != 1:
        return None
    return next(iter(records.items()))


def error_reply(
    msg: Message, reason: str, code: int = ErrorCode.MOD_FAILED_PRECONDITION
) -> Message:
    """An error reply to ``msg`` (Flower's mod-precondition code unless told otherwise), logged."""
    log(ERROR, reason)
    return Message(Error(code=code, reason=reason), reply_to=msg)
