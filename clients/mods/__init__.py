"""fl-ext's client-side capabilities as Flower client mods, for a user's own ClientApp.

``mod(msg, context, call_next) -> Message``, as Flower's own mods. In mods order (first is
outermost)::

    model = Net()  # the app's model: names, shapes, dtypes as the server's ArrayRecord
    app = ClientApp(
        mods=[
            ClientInfoMod(model),  # client-info in replies; refuses another version/schema
            DpSgdMod(),  # DP-SGD rounds: the spend in the reply (the app uses DpSgdTraining)
            CodecMod(model),  # decodes the broadcast, encodes the update (codec-up/-down)
            AttackMod(),  # simulation only: the node's client-side attack role
        ]
    )

``DpSgdTraining`` (Opacus) and ``poisoned_labels`` are what the app's own training code calls:
a mod cannot reach into the loop or the dataset. ``DpSgdTraining`` is imported on first use,
so an app without DP-SGD does not pay for Opacus.
"""

from typing import Any

from clients.mods.attack import AttackMod, poisoned_labels
from clients.mods.codec import CodecMod
from clients.mods.dp_check import DpSgdMod
from clients.mods.info import ClientInfoMod

__all__ = [
    "AttackMod",
    "ClientInfoMod",
    "CodecMod",
    "DpSgdMod",
    "DpSgdTraining",
    "PrivateTraining",
    "poisoned_labels",
]


def __getattr__(name: str) -> Any:
    if name in ("DpSgdTraining", "PrivateTraining"):
        from clients.mods import dp_sgd

        return getattr(dp_sgd, name)
    raise AttributeError(f"module 'clients.mods' has no attribute {name!r}")
