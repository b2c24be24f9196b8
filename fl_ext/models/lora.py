"""LoRA adapters on a frozen backbone for federated fine-tuning, and exact ways to aggregate them.

Adapters are injected with ``peft.inject_adapter_in_model`` (works on any ``nn.Module``, no
``PeftModel`` wrapper and no transformers config needed); it replaces each target module in
place by a ``peft`` LoRA layer, so the backbone's state-dict names change from ``head.1.weight``
to ``head.1.base_layer.weight`` and the adapter adds ``head.1.lora_A.default.weight`` ([r, in])
and ``head.1.lora_B.default.weight`` ([out, r]). A Conv2d target gets ``lora_A`` as a
Conv2d(in, r, k) ([r, in, kh, kw]) and ``lora_B`` as a 1x1 Conv2d(r, out) ([out, r, 1, 1]).
Either way the layer's weight moves by ``s * B @ A`` (A flattened to [r, in * kh * kw]), with
``s = alpha / r``.

Why the aggregation mode matters: the server wants the mean update ``sum_i w_i s B_i A_i``, but
averaging the factors (FlowerTune's baseline, :func:`fedavg_ab`) gives ``s * mean(B) mean(A)``,
which differs by the cross terms. Two exact alternatives:

* FFA-LoRA (``LoraSpec(train_a=False)``): every party draws the same A from ``seed`` and keeps it
  frozen, so ``mean(B_i) A == mean(B_i A)`` exactly; only B travels (half the bytes of A and B for
  square layers).
* FlexLoRA (:func:`flexlora`): average the full products (:func:`product_mean`) and hand each
  client back the best approximation at its own rank (:func:`truncate`, truncated SVD), which
  also lets clients of different capability (:func:`rank_for_capability`) train different ranks.

``peft`` is imported inside the functions that need it (its import takes seconds).
"""

from __future__ import annotations

import math
import re
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

__all__ = [
    "LoraSpec",
    "adapter_bytes",
    "adapter_state",
    "add_adapters",
    "aggregate_adapter_states",
    "backbone_bytes",
    "fedavg_ab",
    "ffa_mean",
    "flexlora",
    "flexlora_states",
    "load_adapter_state",
    "lora_spec_of",
    "normalise_weights",
    "product_mean",
    "rank_for_capability",
    "target_dims",
    "truncate",
]

_ADAPTER = "default"  # peft's adapter name; appears in every adapter tensor's state-dict name
_A_KEY = f".lora_A.{_ADAPTER}."
_B_KEY = f".lora_B.{_ADAPTER}."
_SPEC_ATTR = "fl_ext_lora_spec"
_SUPPORTED = (nn.Linear, nn.Conv2d)
_WEIGHT_SUM_TOL = 1e-6


@dataclass(frozen=True)
class LoraSpec:
    """What every party must agree on for the adapters to be interchangeable.

    ``targets``: full module names (as in ``model.named_modules()``) to adapt; ``None`` means
    every ``nn.Linear`` and ``nn.Conv2d`` of the backbone, the last (classifier) layer included,
    since with a frozen backbone a LoRA on the head is the only way the output layer adapts.
    ``train_a=False`` is FFA-LoRA: A stays frozen at its ``seed``-drawn init and only B trains
    and travels. ``seed`` fixes A's init (the same on every client and the server); B starts at
    zero, so the adapted model starts equal to the backbone.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | None = None
    train_a: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)) or (
            self.alpha <= 0
        ):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        if self.targets is not None:
            if not isinstance(self.targets, tuple) or not self.targets:
                raise ValueError(
                    f"targets must be None (all Linear/Conv2d) or a non-empty tuple of module "
                    f"names, got {self.targets!r}"
                )
            bad = [t for t in self.targets if not isinstance(t, str) or not t]
            if bad:
                raise ValueError(f"targets must be non-empty module names, got {bad!r}")
            if len(set(self.targets)) != len(self.targets):
                raise ValueError(f"targets must not repeat a module, got {self.targets!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def scaling(self) -> float:
        """The LoRA scale ``s = alpha / rank`` (delta W = s * B @ A)."""
        return float(self.alpha) / self.rank


# ----------------------------------------------------------------------------- model side


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def target_dims(
    model: nn.Module, targets: Sequence[str] | None = None
) -> OrderedDict[str, tuple[int, int]]:
    """``(out, in)`` of each target's weight as a matrix (Conv2d: ``in * kh * kw``), in order.

    ``targets=None`` means every Linear/Conv2d. Works on a plain or an adapted model; a name that
    is not a module, or names a module peft cannot adapt here, raises ValueError.
    """
    modules = dict(model.named_modules())
    if targets is None:
        adapted = [n for n, m in modules.items() if _is_lora_layer(m)]
        names = [
            n
            for n, m in modules.items()
            if n in adapted
            or (isinstance(m, _SUPPORTED) and not any(n.startswith(f"{p}.") for p in adapted))
        ]
        if not names:
            raise ValueError("the model has no nn.Linear or nn.Conv2d module to adapt")
    else:
        names = list(targets)
    dims: OrderedDict[str, tuple[int, int]] = OrderedDict()
    for name in names:
        if name not in modules or name == "":
            raise ValueError(
                f"target module {name!r} is not in the model; modules are "
                f"{[n for n in modules if n]}"
            )
        module = modules[name]
        base = module.base_layer if _is_lora_layer(module) else module
        if not isinstance(base, _SUPPORTED):
            raise ValueError(
                f"target module {name!r} is a {type(base).__name__}; only nn.Linear and "
                f"nn.Conv2d can be adapted"
            )
        weight = base.weight
        dims[name] = (int(weight.shape[0]), int(weight[0].numel()))
    return dims


def add_adapters(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject LoRA adapters (in place; the same model is returned) and freeze the backbone.

    A is drawn from ``spec.seed`` (per module, independent of the global torch RNG, which is left
    untouched), B is zero. Every backbone parameter gets ``requires_grad=False``; B trains, A
    trains only if ``spec.train_a``. The spec is kept on the model (:func:`lora_spec_of`) so
    :func:`adapter_state` knows which tensors travel.
    """
    import peft

    if any(_is_lora_layer(m) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; add_adapters expects a backbone")
    names = list(target_dims(model, spec.targets))
    pattern = "|".join(re.escape(n) for n in names)  # fullmatch: exact names, no suffixes
    config = peft.LoraConfig(
        r=spec.rank,
        lora_alpha=cast("int", spec.alpha),  # typed int in peft; a float scales the same
        target_modules=f"(?:{pattern})",
        lora_dropout=0.0,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):  # peft's own init would consume the global RNG
        model = peft.inject_adapter_in_model(config, model, adapter_name=_ADAPTER)
    modules = dict(model.named_modules())
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        for name in names:
            layer = modules[name]
            a = layer.lora_A[_ADAPTER].weight
            b = layer.lora_B[_ADAPTER].weight
            gen = torch.Generator().manual_seed(_module_seed(spec.seed, name))
            bound = 1.0 / math.sqrt(a[0].numel())  # kaiming_uniform(a=sqrt(5)), peft's default
            a.copy_(
                torch.empty(a.shape, dtype=torch.float64).uniform_(-bound, bound, generator=gen)
            )
            b.zero_()
            a.requires_grad_(spec.train_a)
            b.requires_grad_(True)
            if not math.isclose(float(layer.scaling[_ADAPTER]), spec.scaling, rel_tol=1e-12):
                raise ValueError(  # a peft change (e.g. rsLoRA by default) would break the math
                    f"peft scales {name!r} by {layer.scaling[_ADAPTER]}, expected {spec.scaling}"
                )
    setattr(model, _SPEC_ATTR, spec)
    return model


def _module_seed(seed: int, name: str) -> int:
    """A's seed for one module: fixed by (seed, name), so adding a target leaves others' A."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def lora_spec_of(model: nn.Module) -> LoraSpec:
    """The spec :func:`add_adapters` used on this model (ValueError if it has no adapters)."""
    spec = getattr(model, _SPEC_ATTR, None)
    if not isinstance(spec, LoraSpec):
        raise ValueError("the model has no adapters from add_adapters")
    return spec


def _travelling(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    spec = lora_spec_of(model)
    return [
        (k, v)
        for k, v in model.state_dict().items()
        if _B_KEY in k or (spec.train_a and _A_KEY in k)
    ]


def adapter_state(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The adapter tensors that travel, as numpy copies, in state-dict order.

    FFA (``train_a=False``): only the ``lora_B`` tensors (A is fixed and known to all);
    otherwise ``lora_A`` and ``lora_B`` of each module.
    """
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in _travelling(model))


def load_adapter_state(model: nn.Module, named: Mapping[str, np.ndarray]) -> None:
    """Load travelling adapter tensors strictly: same names, same shapes, finite values."""
    current = dict(_travelling(model))
    missing = [k for k in current if k not in named]
    unexpected = [k for k in named if k not in current]
    if missing or unexpected:
        raise ValueError(f"adapter names differ: missing {missing}, unexpected {unexpected}")
    for k, target in current.items():
        value = np.asarray(named[k])
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"adapter {k!r} has shape {tuple(value.shape)}, the model needs "
                f"{tuple(target.shape)}"
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"adapter {k!r} has non-finite values")
    with torch.no_grad():
        for k, target in current.items():
            target.copy_(torch.as_tensor(np.asarray(named[k])).to(target.dtype))


def adapter_bytes(named: Mapping[str, np.ndarray]) -> int:
    """Bytes of the given arrays (an upload of :func:`adapter_state`)."""
    return int(sum(np.asarray(a).nbytes for a in named.values()))


def backbone_bytes(model: nn.Module) -> int:
    """Bytes of the backbone's parameters, adapters excluded: a full fine-tune's upload."""
    return int(
        sum(
            p.numel() * p.element_size()
            for n, p in model.named_parameters()
            if ".lora_A." not in n and ".lora_B." not in n
        )
    )


def rank_for_capability(
    memory_mb: float,
    *,
    model: nn.Module,
    targets: Sequence[str] | None = None,
    ranks: Sequence[int] = (2, 4, 8, 16),
    bytes_per_value: int = 4,
    copies: int = 4,
) -> int:
    """The largest of ``ranks`` whose adapter training state fits in ``memory_mb``.

    Rule: rank r costs ``r * sum(in + out)`` values over the targets (A [r, in] + B [out, r]),
    each held ``copies`` times (default 4: weights, gradients and Adam's two moments) at
    ``bytes_per_value`` bytes. ``memory_mb`` is the budget left for adapter state after the frozen
    backbone and activations, which this rule does not count. ValueError if not even the
    smallest rank fits (such a client should not be selected for LoRA training).
    """
    if not math.isfinite(memory_mb) or memory_mb <= 0:
        raise ValueError(f"memory_mb must be a finite number > 0, got {memory_mb!r}")
    if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
        raise ValueError(f"ranks must be non-empty integers >= 1, got {list(ranks)}")
    if bytes_per_value < 1 or copies < 1:
        raise ValueError(
            f"bytes_per_value and copies must be >= 1, got {bytes_per_value}, {copies}"
        )
    per_rank = sum(o + i for o, i in target_dims(model, targets).values())
    budget = memory_mb * 2**20
    fitting = [r for r in ranks if r * per_rank * bytes_per_value * copies <= budget]
    if not fitting:
        need = min(ranks) * per_rank * bytes_per_value * copies / 2**20
        raise ValueError(
            f"memory_mb={memory_mb} fits no rank in {sorted(ranks)}; rank {min(ranks)} needs "
            f"{need:.3f} MB"
        )
    return max(fitting)


# ----------------------------------------------------------------------------- aggregation math


def _f64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().to(torch.float64).numpy())
    return np.asarray(x, dtype=np.float64)


def normalise_weights(counts: Sequence[float]) -> np.ndarray:
    """Client weights from example counts (non-negative, positive sum), summing to 1."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)) or np.any(c < 0) or c.sum() <= 0:
        raise ValueError(f"counts must be finite, >= 0, with a positive sum, got {list(counts)}")
    out: np.ndarray = c / c.sum()
    return out


def _check_weights(weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n:
        raise ValueError(f"got {w.size} weights for {n} clients")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    if abs(w.sum() - 1.0) > _WEIGHT_SUM_TOL:
        raise ValueError(
            f"weights must sum to 1 (within {_WEIGHT_SUM_TOL}), got sum {w.sum()!r}; "
            f"use normalise_weights(counts)"
        )
    return w


def _check_pairs(
    a_mats: Sequence[np.ndarray | torch.Tensor], b_mats: Sequence[np.ndarray | torch.Tensor]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(a_mats) != len(b_mats) or not a_mats:
        raise ValueError(f"need as many A as B factors (>= 1), got {len(a_mats)} and {len(b_mats)}")
    a_list = [_f64(a) for a in a_mats]
    b_list = [_f64(b) for b in b_mats]
    out, inn = b_list[0].shape[0], a_list[0].shape[-1]
    for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(
                f"client {i}: B must be [out, r] and A [r, in], got {b.shape} and {a.shape}"
            )
        if (b.shape[0], a.shape[1]) != (out, inn):
            raise ValueError(f"client {i}: delta shape {(b.shape[0], a.shape[1])} != {(out, inn)}")
    return a_list, b_list


def _check_scaling(scaling: float) -> float:
    if not math.isfinite(scaling) or scaling <= 0:
        raise ValueError(f"scaling must be a finite number > 0, got {scaling!r}")
    return float(scaling)


def ffa_mean(
    b_mats: Sequence[np.ndarray | torch.Tensor], *, weights: Sequence[float] | np.ndarray
) -> np.ndarray:
    """FFA-LoRA: the weighted mean of the B factors; exact because A is shared and frozen."""
    if not b_mats:
        raise ValueError("need at least one B factor")
    w = _check_weights(weights, len(b_mats))
    bs = [_f64(b) for b in b_mats]
    if any(b.shape != bs[0].shape for b in bs):
        raise ValueError(f"B factors differ in shape: {[b.shape for b in bs]}")
    return np.asarray(sum(wi * b for wi, b in zip(w, bs, strict=True)))


def fedavg_ab(
    a_mats: Sequence[np.ndarray | torch.Tensor],
    b_mats: Sequence[np.ndarray | torch.Tensor],
    *,
    weights: Sequence[float] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """FlowerTune's baseline: weighted means of A and of B, separately (inexact; cross terms)."""
    a_list, b_list = _check_pairs(a_mats, b_mats)
    if any(a.shape != a_list[0].shape for a in a_list):
        raise ValueError(
            f"fedavg_ab needs one rank for all clients, got {[a.shape for a in a_list]}"
        )
    w = _check_weights(weights, len(a_list))
    a = np.asarray(sum(wi * x for wi, x in zip(w, a_list, strict=True)))
    b = np.asarray(sum(wi * x for wi, x in zip(w, b_list, strict=True)))
    return a, b


def product_mean(
    a_mats: Sequence[np.ndarray | torch.Tensor],
    b_mats: Sequence[np.ndarray | torch.Tensor],
    *,
    weights: Sequence[float] | np.ndarray,
    scaling: float | Sequence[float],
) -> np.ndarray:
    """The exact mean update ``sum_i w_i * s_i * B_i @ A_i`` ([out, in], float64).

    ``scaling`` is one ``s`` for all, or one per client (clients of different rank have
    ``s_i = alpha / r_i``). Ranks may differ between clients.
    """
    a_list, b_list = _check_pairs(a_mats, b_mats)
    w = _check_weights(weights, len(a_list))
    scales = (
        [float(scaling)] * len(a_list)
        if isinstance(scaling, int | float)
        else [float(s) for s in scaling]
    )
    if len(scales) != len(a_list):
        raise ValueError(f"got {len(scales)} scalings for {len(a_list)} clients")
    scales = [_check_scaling(s) for s in scales]
    delta = np.zeros((b_list[0].shape[0], a_list[0].shape[1]), dtype=np.float64)
    for wi, si, a, b in zip(w, scales, a_list, b_list, strict=True):
        delta += (wi * si) * (b @ a)
    return delta


def truncate(
    delta: np.ndarray | torch.Tensor, *, rank: int, scaling: float
) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``(A [rank, in], B [out, rank])`` with ``s * B @ A`` the best rank-``rank`` fit.

    Truncated SVD ``delta = U S V^T`` (Eckart-Young): ``B = U_r sqrt(S_r / s)``,
    ``A = sqrt(S_r / s) V_r^T``. If ``rank > min(out, in)`` the extra rows of A and columns of B
    are zero, so the shapes are always the requested ones.
    """
    d = _f64(delta)
    if d.ndim != 2:
        raise ValueError(f"delta must be a matrix [out, in], got shape {d.shape}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    s = _check_scaling(scaling)
    out, inn = d.shape
    u, sv, vt = np.linalg.svd(d, full_matrices=False)
    k = min(rank, sv.size)
    root = np.sqrt(sv[:k] / s)
    a = np.zeros((rank, inn), dtype=np.float64)
    b = np.zeros((out, rank), dtype=np.float64)
    a[:k] = root[:, None] * vt[:k]
    b[:, :k] = u[:, :k] * root[None, :]
    return a, b


def flexlora(
    a_mats: Sequence[np.ndarray | torch.Tensor],
    b_mats: Sequence[np.ndarray | torch.Tensor],
    *,
    weights: Sequence[float] | np.ndarray,
    alpha: float,
    ranks: Sequence[int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """FlexLoRA: :func:`product_mean` (``s_i = alpha / r_i``), then :func:`truncate` per rank.

    Returns one ``(A, B)`` per entry of ``ranks`` (default: each client's own rank), each at
    scale ``alpha / rank`` as peft uses it.
    """
    if not (isinstance(alpha, int | float) and math.isfinite(alpha)) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    a_list, _ = _check_pairs(a_mats, b_mats)
    client_ranks = [a.shape[0] for a in a_list]
    delta = product_mean(a_mats, b_mats, weights=weights, scaling=[alpha / r for r in client_ranks])
    targets = client_ranks if ranks is None else list(ranks)
    return [truncate(delta, rank=r, scaling=alpha / r) for r in targets]


# ----------------------------------------------------------------------------- state level


def _as_matrix_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adapter tensors to matrices: A [r, ...] -> [r, in*kh*kw]; B [out, r, 1, 1] -> [out, r]."""
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], b.shape[1])


def _module_names(named: Iterable[str]) -> list[str]:
    return [k.split(_B_KEY)[0] for k in named if _B_KEY in k]


def aggregate_adapter_states(
    states: Sequence[Mapping[str, np.ndarray]],
    *,
    weights: Sequence[float] | np.ndarray,
    mode: Literal["ffa", "fedavg_ab"],
) -> OrderedDict[str, np.ndarray]:
    """Weighted mean of every travelling tensor: exact for ``"ffa"`` (B only), not for A and B.

    States must share names and shapes; the result keeps the first state's order and dtypes.
    """
    if not states:
        raise ValueError("need at least one adapter state")
    if mode not in ("ffa", "fedavg_ab"):
        raise ValueError(f"mode must be 'ffa' or 'fedavg_ab', got {mode!r}")
    names = list(states[0])
    has_a = any(_A_KEY in k for k in names)
    if (mode == "ffa") == has_a:
        raise ValueError(
            f"mode {mode!r} expects {'only B' if mode == 'ffa' else 'A and B'} tensors, got "
            f"{'A and B' if has_a else 'only B'}"
        )
    for i, st in enumerate(states):
        if list(st) != names:
            raise ValueError(f"state {i} names {list(st)} differ from state 0's {names}")
    w = _check_weights(weights, len(states))
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k in names:
        arrays = [_f64(st[k]) for st in states]
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"tensor {k!r} differs in shape: {[a.shape for a in arrays]}")
        mean = sum(wi * a for wi, a in zip(w, arrays, strict=True))
        out[k] = np.asarray(mean).astype(np.asarray(states[0][k]).dtype)
    return out


def flexlora_states(
    states: Sequence[Mapping[str, np.ndarray]],
    *,
    weights: Sequence[float] | np.ndarray,
    alpha: float,
    ranks: Sequence[int] | None = None,
) -> list[OrderedDict[str, np.ndarray]]:
    """:func:`flexlora` per adapted module of A-and-B states (ranks may differ per client).

    Returns one state per entry of ``ranks`` (default: each client's own rank), ready for
    :func:`load_adapter_state` on a model adapted at that rank with the same ``alpha``.
    """
    if not states:
        raise ValueError("need at least one adapter state")
    names = list(states[0])
    modules = _module_names(names)
    expected = [k for m in modules for k in (f"{m}{_A_KEY}weight", f"{m}{_B_KEY}weight")]
    for i, st in enumerate(states):
        if sorted(st) != sorted(expected):
            raise ValueError(
                f"state {i} names {list(st)} are not the A and B tensors of modules {modules}"
            )
    client_ranks = [int(np.asarray(st[expected[0]]).shape[0]) for st in states]
    targets = client_ranks if ranks is None else list(ranks)
    outs: list[OrderedDict[str, np.ndarray]] = [OrderedDict() for _ in targets]
    for m in modules:
        ka, kb = f"{m}{_A_KEY}weight", f"{m}{_B_KEY}weight"
        raw = [(np.asarray(st[ka]), np.asarray(st[kb])) for st in states]
        pairs = [_as_matrix_pair(a, b) for a, b in raw]
        factors = flexlora(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            weights=weights,
            alpha=alpha,
            ranks=targets,
        )
        a0, b0 = raw[0]
        for out, r, (a, b) in zip(outs, targets, factors, strict=True):
            out[ka] = a.reshape(r, *a0.shape[1:]).astype(a0.dtype)
            out[kb] = b.reshape(b0.shape[0], r, *b0.shape[2:]).astype(b0.dtype)
    order = [k for k in names if k in expected]
    return [OrderedDict((k, out[k]) for k in order) for out in outs]
