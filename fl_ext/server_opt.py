"""Server optimizers: the aggregate update treated as a pseudo-gradient (Reddi et al., ICLR 2021).

``update(delta, state) -> (step, state)`` in optax' style: ``delta`` is the round's aggregate
update (new global model minus the current one, from any rule or the Gaussian mechanism),
``step`` is what is added to the global model instead, ``state`` is explicit (the strategy owns
and checkpoints it; no hidden fields). Every rule works on flat float32 tensors.

- :class:`FedAvgM` (Hsu et al., 2019): server momentum and learning rate.
- :class:`FedAdagrad`, :class:`FedAdam`, :class:`FedYogi` (Reddi et al., Algorithm 2):
  ``m = b1 m + (1 - b1) delta``; ``v`` by each rule; ``step = eta m / (sqrt(v) + tau)``.
  Moments start at zero, as in Flower. ``FedAdam(bias_correction=True)`` scales ``eta`` by
  ``sqrt(1 - b2^t) / (1 - b1^t)`` at step ``t`` (Kingma & Ba); Flower always corrects, with
  ``t`` = round + 1 (one step ahead).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

State = dict[str, torch.Tensor]


def _check(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    ok = (low < value if low_open else low <= value) and value <= high
    if not (isinstance(value, int | float) and not isinstance(value, bool) and ok):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


class ServerOptimizer(ABC):
    """Turns the aggregate update into the step the global model takes."""

    name: str = "server_opt"

    def init(self, params: torch.Tensor) -> State:
        """Zero state shaped like the flat global model."""
        return {"count": torch.zeros((), dtype=torch.int64)}

    @abstractmethod
    def update(self, delta: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``(step, new state)``; neither input is modified."""

    def check_state(self, state: State, size: int) -> None:
        """Refuse a restored state of another shape (another model or optimizer)."""
        for key, value in state.items():
            if key != "count" and tuple(value.shape) != (size,):
                raise ValueError(
                    f"{type(self).__name__} state {key!r} has shape {tuple(value.shape)}, "
                    f"the model has {size} parameters"
                )

    def describe(self) -> str:
        """For logs and tags."""
        fields = ", ".join(f"{k}={v:g}" for k, v in vars(self).items() if isinstance(v, float))
        return f"{type(self).__name__}({fields})"


class FedAvgM(ServerOptimizer):
    """``v = momentum v + delta`` (``v = delta`` at the first step); ``step = lr v``.

    Flower's FedAvgM on the same replies: its pseudo-gradient is ``-delta``.
    """

    def __init__(self, *, lr: float = 1.0, momentum: float = 0.9) -> None:
        self.lr = _check("server_opt.lr", lr, 0.0, math.inf, low_open=True)
        self.momentum = _check("server_opt.momentum", momentum, 0.0, 1.0)
        if self.momentum == 1.0:
            raise ValueError("server_opt.momentum must be < 1, got 1.0")

    def init(self, params: torch.Tensor) -> State:
        return {**super().init(params), "v": torch.zeros_like(params)}

    def update(self, delta: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        first = int(state["count"]) == 0
        v = delta.clone() if first or self.momentum == 0 else state["v"] * self.momentum + delta
        return v * self.lr, {"count": state["count"] + 1, "v": v}


class _Adaptive(ServerOptimizer):
    """First moment and ``eta m / (sqrt(v) + tau)``; subclasses update ``v``."""

    def __init__(self, *, eta: float, beta_1: float, beta_2: float, tau: float) -> None:
        self.eta = _check("server_opt.eta", eta, 0.0, math.inf, low_open=True)
        self.beta_1 = _check("server_opt.beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _check("server_opt.beta_2", beta_2, 0.0, 1.0)
        self.tau = _check("server_opt.tau", tau, 0.0, math.inf, low_open=True)
        if self.beta_1 == 1.0:
            raise ValueError("server_opt.beta_1 must be < 1, got 1.0")

    def init(self, params: torch.Tensor) -> State:
        zeros = torch.zeros_like(params)
        return {**super().init(params), "m": zeros, "v": zeros.clone()}

    @abstractmethod
    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        """The new ``v`` from the old one and ``delta ** 2``."""

    def rate(self, step: int) -> float:
        """The learning rate at ``step`` (1 for the first)."""
        return self.eta

    def update(self, delta: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        m = state["m"] * self.beta_1 + delta * (1.0 - self.beta_1)
        v = self.second_moment(state["v"], delta * delta)
        count = state["count"] + 1
        step = m / (torch.sqrt(v) + self.tau) * self.rate(int(count))
        return step, {"count": count, "m": m, "v": v}


class FedAdagrad(_Adaptive):
    """``v = v + delta^2`` (Flower's defaults: eta 0.1, beta_1 0, tau 1e-3)."""

    def __init__(self, *, eta: float = 0.1, beta_1: float = 0.0, tau: float = 1e-3) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=0.0, tau=tau)

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        return v + sq


class FedAdam(_Adaptive):
    """``v = b2 v + (1 - b2) delta^2`` (Flower's defaults: eta 0.1, b1 0.9, b2 0.99, tau 1e-3)."""

    def __init__(
        self,
        *,
        eta: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        bias_correction: bool = False,
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)
        self.bias_correction = bool(bias_correction)

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        return v * self.beta_2 + sq * (1.0 - self.beta_2)

    def rate(self, step: int) -> float:
        if not self.bias_correction:
            return self.eta
        return self.eta * math.sqrt(1.0 - self.beta_2**step) / (1.0 - self.beta_1**step)


class FedYogi(_Adaptive):
    """``v = v - (1 - b2) delta^2 sign(v - delta^2)`` (Flower: eta 0.01, b1 0.9, b2 0.99)."""

    def __init__(
        self, *, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        return v - sq * torch.sign(v - sq) * (1.0 - self.beta_2)
