"""A slower device on a real deployment: hold each train reply ``train-delay-s`` seconds.

A SuperNode started with ``--node-config "... train-delay-s=4"`` answers every train message
4 s later than it could, as a phone on a slow link would. It exists to try stragglers and the
asynchronous driver on real processes (a simulation has the simulated network for that).
A bad value is a clear error reply, never a crash of the ClientApp.
"""

from __future__ import annotations

import math
import time

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from clients.mods.common import error_reply, is_train

DELAY_KEY = "train-delay-s"
MAX_DELAY_S = 3600.0


def slow_device_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Train as usual, then wait the node's ``train-delay-s`` more (absent: no wait)."""
    if not is_train(msg) or DELAY_KEY not in context.node_config:
        return call_next(msg, context)
    value = context.node_config[DELAY_KEY]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_DELAY_S
    ):
        return error_reply(
            msg, f"node config {DELAY_KEY}={value!r}: a number of seconds in [0, {MAX_DELAY_S:g}]"
        )
    reply = call_next(msg, context)
    time.sleep(float(value))
    return reply
