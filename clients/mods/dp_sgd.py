"""``DpSgdTraining``: fl-ext's sample-level DP-SGD inside a user's own training loop.

A Flower mod only sees messages, so it cannot make the app's loop private; this helper does,
from the server's train config (``dp-max-grad-norm``, ``dp-noise-multiplier`` or
``dp-target-epsilon`` with ``dp-planned-rounds``, ``dp-delta``, ``dp-accountant``,
``dp-spent``; see :mod:`clients.dp_sgd_client`), with Opacus' ``make_private`` for per-sample
clipping, Poisson sampling and noise, and fl-ext's accounting for the spend: the client's
history of :class:`~fl_ext.privacy.GaussianSteps` in ``context.state`` (the same record
fl-ext's own DP-SGD client keeps), or the server ledger's if that is longer (a restart).

What the app's train function must do in a DP-SGD round (``DpSgdTraining.for_message`` is
None in any other round)::

    dp = DpSgdTraining.for_message(msg, context)   # client id: node_config["partition-id"]
    if dp is not None:
        private = dp.make_private(module=model, optimizer=optimizer, data_loader=loader)
        model_, optimizer, loader = private.module, private.optimizer, private.data_loader
    ...  # the usual loop, with model_, optimizer, loader (and private.criterion for ghost)
    if dp is not None:
        metrics.update(dp.finish())                # optional: DpSgdMod adds them anyway

and the ClientApp must have :class:`~clients.mods.dp_check.DpSgdMod` in its mods, which puts
the spend in the reply and refuses a DP round that skipped the helper. The trained weights
are in ``model`` itself (Opacus' wrapper shares its parameters; its own state dict has
``_module.``-prefixed names). The privacy holds only for training with the returned objects,
as Opacus says.

Differences from fl-ext's own DP-SGD client: the loop and the optimizer are the app's; the
sample rate is Opacus' ``1 / len(data_loader)`` and the steps are those Opacus' optimizer took
(its accountant's count); ``dp-grad-sample-mode = fused`` (fl-ext's kernel, bound to fl-ext's
own loop) runs as Opacus' ``hooks`` mode, which clips the same per-sample gradients: same
guarantee, slower. The noise multiplier calibrated for a ``dp-target-epsilon`` assumes
``epochs`` (``local-epochs`` of the config unless given) passes over the loader per round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from clients.dp_sgd_client import client_history, dp_config, save_history
from clients.mods.common import message_config
from clients.mods.dp_check import MESSAGE_ID, ROUND_KEY, is_dp_sgd
from fl_ext.privacy import GaussianSteps, compute_epsilon
from fl_ext.privacy.dp_sgd import check_model, noise_for
from fl_ext.refusals import BudgetExhausted


@dataclass(frozen=True)
class PrivateTraining:
    """What the app trains with in a DP-SGD round (from Opacus' ``make_private``).

    ``criterion`` is Opacus' wrapped loss in ``ghost`` mode (use it for ``loss.backward()``),
    else the criterion given to ``make_private`` (None if none was).
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader[Any]
    criterion: Callable[..., Any] | None


class DpSgdTraining:
    """One round of sample-level DP-SGD in the app's own loop; see the module docstring.

    Built from the train message and the node's context (its ``state`` keeps the history).
    ``client_id``: the key the server's ledger accounts this data under, a stable integer >= 0
    per data owner; default ``context.node_config["partition-id"]``.
    """

    def __init__(self, msg: Message, context: Context, *, client_id: int | None = None) -> None:
        if not is_dp_sgd(msg):
            raise ValueError("not a DP-SGD train message (its config has no dp-mode=dp_sgd)")
        if client_id is None:
            if "partition-id" not in context.node_config:
                raise ValueError(
                    "DpSgdTraining needs client_id= (a stable integer per data owner) when the "
                    "node config has no partition-id"
                )
            client_id = int(context.node_config["partition-id"])
        if isinstance(client_id, bool) or not isinstance(client_id, int) or client_id < 0:
            raise ValueError(f"client_id must be an integer >= 0, got {client_id!r}")
        self.msg, self.context, self.client_id = msg, context, client_id
        self.config = message_config(msg)
        self.dp = dp_config(self.config)
        self.history = client_history(context.state, self.config, str(client_id))
        self.sample_rate = 0.0
        self.noise_multiplier = 0.0
        self.steps = 0
        self._module: nn.Module | None = None
        self._finished = False

    @classmethod
    def for_message(
        cls, msg: Message, context: Context, *, client_id: int | None = None
    ) -> DpSgdTraining | None:
        """The helper for a DP-SGD train message, None for any other message."""
        return cls(msg, context, client_id=client_id) if is_dp_sgd(msg) else None

    def make_private(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        criterion: Callable[..., Any] | None = None,
        epochs: int | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> PrivateTraining:
        """Opacus-wrapped model, optimizer and Poisson-sampling loader for this round.

        Raises :class:`~fl_ext.refusals.BudgetExhausted` (nothing is trained; ``DpSgdMod``
        declines the round for the client) when ``epochs`` passes over ``data_loader`` would
        take the client's epsilon past ``dp-target-epsilon``.
        """
        if self._module is not None:
            raise RuntimeError("make_private was already called for this round")
        mode = "hooks" if self.dp.grad_sample_mode == "fused" else self.dp.grad_sample_mode
        check_model(module, mode)
        epochs = int(self.config.get("local-epochs", 1)) if epochs is None else int(epochs)
        if epochs < 1 or len(data_loader) < 1:
            raise ValueError(f"need epochs >= 1 and a non-empty loader, got {epochs} epochs")
        self.sample_rate = 1.0 / len(data_loader)  # as Opacus' make_private
        steps = epochs * len(data_loader)
        self.noise_multiplier = noise_for(self.dp, self.sample_rate, steps)
        self._check_budget(GaussianSteps(self.noise_multiplier, self.sample_rate, steps))
        engine = PrivacyEngine(accountant="rdp")  # its accountant is unused: the history is ours
        wrapped = engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.dp.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=mode,
            noise_generator=noise_generator,
            **({"criterion": criterion or nn.CrossEntropyLoss()} if mode == "ghost" else {}),
        )
        if mode == "ghost":
            private_module, private_optimizer, criterion, private_loader = wrapped
        else:
            private_module, private_optimizer, private_loader = wrapped
        private_optimizer.attach_step_hook(self._count_step)  # the steps Opacus would account
        self._module = private_module
        return PrivateTraining(private_module, private_optimizer, private_loader, criterion)

    def _count_step(self, _optimizer: Any) -> None:
        self.steps += 1

    def _check_budget(self, planned: GaussianSteps) -> None:
        target = self.dp.target_epsilon
        if target is None:
            return
        after = compute_epsilon([*self.history, planned], self.dp.delta, self.dp.accountant)
        if after > target:
            spent = compute_epsilon(self.history, self.dp.delta, self.dp.accountant)
            raise BudgetExhausted(
                f"privacy budget exhausted: epsilon spent {spent:.4g}, this round would reach "
                f"{after:.4g} > target {target:g} (delta {self.dp.delta:g})"
            )

    def finish(self) -> dict[str, int | float]:
        """Record the round's spend (``context.state``) and return the reply's DP metrics.

        Call it once, after training. Removes Opacus' hooks from the model. A round in which
        no private step was taken (training ran with the original objects) is an error.
        """
        if self._module is None:
            raise RuntimeError("finish() before make_private(): nothing was trained privately")
        if self._finished:
            raise RuntimeError("finish() was already called for this round")
        close = getattr(self._module, "_close", None)  # drop Opacus' hooks and buffers
        if callable(close):
            close()
        self._finished = True
        if self.steps == 0:
            raise RuntimeError(
                "no DP-SGD step was taken: train with the module, optimizer and data loader "
                "that make_private returned"
            )
        entry = GaussianSteps(self.noise_multiplier, self.sample_rate, self.steps)
        history = [*self.history, entry]
        save_history(self.context.state, history)
        metrics: dict[str, int | float] = {
            "dp-client": self.client_id,
            "dp-noise-multiplier": entry.noise_multiplier,
            "dp-sample-rate": entry.sample_rate,
            "dp-steps": entry.steps,
            "dp-epsilon": compute_epsilon(history, self.dp.delta, self.dp.accountant),
        }
        self.context.state[ROUND_KEY] = ConfigRecord(
            {MESSAGE_ID: self.msg.metadata.message_id, **metrics}
        )
        return metrics
