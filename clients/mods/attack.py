"""Client-side simulated attacks (simulation only) for a user's own ClientApp.

With ``ByzantineSimulation(client_role=...)`` the server tells each designated node its role
in the train config (``attack-role``, :data:`fl_ext.attacks.ROLE_KEY`); fl-ext's own client
then trains honestly and acts out the role (``clients.sgd_client.SgdClient.fit``). The roles
(:data:`fl_ext.attacks.CLIENT_ROLES`) are of two kinds, and only one can be a mod:

- ``nan_update``, ``inf_update``, ``oversized``, ``wrong_shape`` change the reply's arrays
  after honest training: :class:`AttackMod` does that to the app's reply, with
  :func:`fl_ext.attacks.malform`, exactly as fl-ext's own client does.
- ``label_flip`` trains on flipped labels. A mod sees messages, not the app's dataset or
  loop, so it cannot flip them: the app's training code calls :func:`poisoned_labels` on its
  labels (a no-op for honest nodes). :class:`AttackMod` then checks that it did: a node told
  to flip labels whose app never called the helper would train honestly and silently turn the
  experiment into one without attack, so its reply becomes an error (Flower's
  ``MOD_FAILED_PRECONDITION``) naming the helper.

Server-crafted attacks (sign flip, Gaussian noise, ALIE, IPM, ...) are omniscient: the server
computes them from the honest updates, and they need no client code at all.

These obey the server: never put :class:`AttackMod` in (or call :func:`poisoned_labels` from)
a deployed app.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from clients.mods.common import error_reply, is_train, message_config, single_array_record
from fl_ext.attacks import CLIENT_ROLES, ROLE_KEY, flip_labels, malform
from flwr_records import named_array_record

LABEL_FLIP = "label_flip"
FLIPPED_KEY = "attack-labels-flipped"  # context.state: the message whose labels were flipped

Labels = TypeVar("Labels", np.ndarray, torch.Tensor)


def poisoned_labels(msg: Message, context: Context, labels: Labels, *, num_classes: int) -> Labels:
    """The labels this node trains on this round: flipped if the server says ``label_flip``.

    Call it in the app's train function on the labels of the local training data (a numpy
    array or a tensor of class indices; call it again on every batch if the loop draws them
    from a loader). Returns ``labels`` itself for honest nodes; for a ``label_flip`` node a
    copy with ``y -> num_classes - 1 - y`` (:func:`fl_ext.attacks.flip_labels`), and notes in
    ``context.state`` that this message's labels were flipped, for :class:`AttackMod`.
    """
    if str(message_config(msg).get(ROLE_KEY, "")) != LABEL_FLIP:
        return labels
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    context.state[FLIPPED_KEY] = ConfigRecord({"message-id": msg.metadata.message_id})
    if isinstance(labels, torch.Tensor):
        return (num_classes - 1) - labels
    return flip_labels(np.asarray(labels), num_classes)


class AttackMod:
    """Acts out the client-side role the server assigned this node (simulation only).

    Malformed-reply roles are applied to the trained arrays of the reply; ``label_flip`` is
    checked to have been applied by the app (see the module docstring). Messages without a
    role pass through untouched. In ``ClientApp(mods=[...])`` put it after
    :class:`~clients.mods.codec.CodecMod`, so that the codec encodes the attacked update.
    """

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        role = str(message_config(msg).get(ROLE_KEY, "")) if is_train(msg) else ""
        if not role:
            return call_next(msg, context)
        if role not in CLIENT_ROLES:
            return error_reply(
                msg, f"AttackMod: unknown role {role!r}; known: {', '.join(CLIENT_ROLES)}"
            )
        if FLIPPED_KEY in context.state:
            del context.state[FLIPPED_KEY]
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        if role == LABEL_FLIP:
            return self._check_flipped(msg, context, reply)
        found = single_array_record(reply)
        if found is None:
            return error_reply(msg, "AttackMod: a train reply needs exactly one ArrayRecord")
        key, record = found
        attacked = malform(record.to_numpy_ndarrays(), role)
        reply.content[key] = named_array_record(
            OrderedDict(zip(record.keys(), attacked, strict=True))
        )
        return reply

    @staticmethod
    def _check_flipped(msg: Message, context: Context, reply: Message) -> Message:
        mark = context.state.get(FLIPPED_KEY)
        if FLIPPED_KEY in context.state:
            del context.state[FLIPPED_KEY]
        if not isinstance(mark, ConfigRecord) or mark.get("message-id") != msg.metadata.message_id:
            return error_reply(
                msg,
                "AttackMod: this node was assigned role 'label_flip', but the app's training did "
                "not call clients.mods.poisoned_labels(msg, context, labels, num_classes=...) "
                "on its labels; a mod cannot flip the app's data",
            )
        return reply
