"""Capacity-scaled sub-models (HeteroFL, FjORD, FedRolex), found from the module graph.

A width ``p`` in ``(0, 1]`` keeps ``k = max(1, ceil(p * C))`` channels of every *hidden*
channel group of size ``C``; the dims fed by the model input and the dims that reach the
model output are never sliced, so every sub-model reads the same inputs and writes the same
logits. Which dims are hidden is read off the ``torch.fx`` graph (with shapes from
``ShapeProp`` on a zero example input) instead of being written down per network, so a new
architecture needs no slicing code of its own:

* every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` output opens a channel group (weight dim 0, bias);
  its input dim follows whichever group produced its input, walking back through
  channel-preserving ops (activations, pooling, dropout, norms, flatten/view);
* through a flatten of ``(N, C, H, W)`` a consumer's feature ``c*H*W + j`` belongs to channel
  ``c``: the plan keeps the multiplier ``H*W`` (channel-major blocks);
* norm layers follow their input's group; a residual add merges the groups it adds;
* a group that reaches the output, the input, or an op the analysis cannot follow is kept
  whole (pinned), which is always consistent. Tensors of modules it does not know are left
  unsliced; if that breaks a width, :meth:`SliceIndex.submodel` says so (it runs the example).

Static / ordered-dropout widths (HeteroFL, FjORD) keep the leading ``k`` channels, so smaller
widths nest inside larger ones; rolling widths (FedRolex) keep ``(offset + arange(k)) % C``,
sorted, so that width 1 is the identity for any offset and a window is one consistent
permutation-free selection in every tensor of the group.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import operator
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.utils._pytree import tree_leaves

from fl_ext.params import ParamSpec

__all__ = ["AttrSlice", "DimSlice", "GroupNormRule", "SliceIndex", "SlicePlan"]

_KEEP_TOL = 1e-9  # ceil(0.3 * 10) must be 3, not 4 from 3.0000000000000004

# ------------------------------------------------------------------ ops the walk follows
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardshrink,
    nn.Softshrink, nn.Tanhshrink, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Threshold,
    nn.RReLU, nn.Softmax, nn.LogSoftmax, nn.Softmin,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Identity,
)  # fmt: skip
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.LocalResponseNorm,
)  # fmt: skip
_CHANNEL_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
)
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

_ELEMENTWISE_FUNCTIONS: frozenset[Any] = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
    operator.abs, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.relu,
    torch.sigmoid, torch.tanh, torch.clamp, torch.exp, torch.softmax, torch.log_softmax,
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.leaky_relu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.softplus, F.softsign, F.logsigmoid,
    F.tanhshrink, F.threshold, F.softmax, F.log_softmax, F.softmin,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
})  # fmt: skip
_ELEMENTWISE_METHODS = frozenset({
    "add", "sub", "mul", "div", "neg", "abs", "relu", "sigmoid", "tanh", "clamp", "exp",
    "softmax", "log_softmax", "add_", "sub_", "mul_", "div_", "relu_", "clamp_",
    "contiguous", "clone", "detach", "float", "to", "type_as",
})  # fmt: skip
_POOL_FUNCTIONS: frozenset[Any] = frozenset({
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.lp_pool1d, F.lp_pool2d, F.local_response_norm,
    torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, torch.avg_pool1d,
})  # fmt: skip
_RESHAPE_FUNCTIONS: frozenset[Any] = frozenset({torch.flatten, torch.reshape})
_RESHAPE_METHODS = frozenset({"flatten", "view", "reshape"})


# ------------------------------------------------------------------ plan records
@dataclass(frozen=True)
class DimSlice:
    """A sliced dim of one tensor: it holds ``multiplier`` consecutive entries per channel."""

    dim: int
    group: int
    multiplier: int = 1


@dataclass(frozen=True)
class AttrSlice:
    """A module size attribute (``in_features``, ``num_features``...) that follows a group.

    ``position`` indexes into a tuple attribute (LayerNorm's ``normalized_shape``).
    """

    module: str
    attr: str
    group: int
    multiplier: int = 1
    position: int | None = None


@dataclass(frozen=True)
class GroupNormRule:
    """A GroupNorm over a sliced group: its kept channel count must divide into its groups."""

    module: str
    group: int
    multiplier: int
    num_groups: int


def _check_width(width: float) -> float:
    """The width as a float, refusing anything outside ``(0, 1]`` (nan included)."""
    if isinstance(width, bool) or not isinstance(width, numbers.Real):
        raise ValueError(f"width must be a number in (0, 1], got {width!r}")
    w = float(width)
    if not 0.0 < w <= 1.0:  # also false for nan
        raise ValueError(f"width must be in (0, 1], got {width!r}")
    return w


def _keep(width: float, channels: int) -> int:
    """Channels a group of ``channels`` keeps at ``width``: ``max(1, ceil(width * C))``."""
    return max(1, math.ceil(width * channels - _KEEP_TOL))


@dataclass(frozen=True)
class SlicePlan:
    """Which dims of which tensors are hidden channel groups, read off the module graph.

    ``groups`` maps a group id to its channel count ``C`` (hidden groups only); ``dims`` names
    the sliced dims of every state entry that has any (state-dict order); everything else is
    left whole.
    """

    model_name: str
    input_shape: tuple[int, ...]
    groups: dict[int, int]
    dims: dict[str, tuple[DimSlice, ...]]
    shapes: dict[str, tuple[int, ...]]
    param_names: frozenset[str]
    attrs: tuple[AttrSlice, ...]
    group_norms: tuple[GroupNormRule, ...]
    unsliced_neighbours: dict[int, tuple[str, ...]]  # unknown tensors next to a sliced group
    output_shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int]) -> SlicePlan:
        """Trace ``model`` on a zero input of shape ``(1, *input_shape)`` and find its groups."""
        name = type(model).__name__
        shape = tuple(int(s) for s in input_shape)
        flags = [(m, m.training) for m in model.modules()]
        try:
            gm = fx.symbolic_trace(model)
        except Exception as err:
            raise ValueError(f"cannot trace {name} with torch.fx: {err}") from err
        example = torch.zeros(1, *shape, **_example_kwargs(model))
        model.eval()  # batch-1 BatchNorm, and no running-statistics update while probing
        try:
            with torch.no_grad():
                out = ShapeProp(gm).propagate(example)
        except Exception as err:
            raise ValueError(
                f"cannot run {name} on an input of shape {(1, *shape)}: {err}"
            ) from err
        finally:
            for m, training in flags:
                m.training = training
        return _Analysis(model, gm).plan(
            model_name=name,
            input_shape=shape,
            output_shapes=tuple(
                tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)
            ),
        )

    def indices(self, width: float, *, offset: int = 0) -> SliceIndex:
        """Channels each group keeps: the leading ``k`` (``offset=0``) or a rolling window.

        A rolling window (FedRolex) is ``(offset + arange(k)) % C`` in every group, sorted.
        """
        w = _check_width(width)
        off = operator.index(offset)
        channels: dict[int, np.ndarray] = {}
        for g, c in self.groups.items():
            kept = np.sort((off + np.arange(_keep(w, c), dtype=np.int64)) % c)
            kept.setflags(write=False)
            channels[g] = kept
        for rule in self.group_norms:
            k = len(channels[rule.group]) * rule.multiplier
            if k % rule.num_groups:
                raise ValueError(
                    f"GroupNorm {rule.module!r}: width {width!r} keeps {k} channels, "
                    f"not divisible by its num_groups={rule.num_groups}"
                )
        return SliceIndex(width=w, offset=off, plan=self, channels=channels)

    def widths_param_count(self, width: float) -> int:
        """Trainable scalars of the sub-model at ``width`` (what a client's memory budget caps)."""
        w = _check_width(width)
        total = 0
        for name in self.shapes:
            if name not in self.param_names:
                continue
            shape = list(self.shapes[name])
            for d in self.dims.get(name, ()):
                shape[d.dim] = _keep(w, self.groups[d.group]) * d.multiplier
            total += math.prod(shape)
        return total


@dataclass(frozen=True)
class SliceIndex:
    """One width (and rolling offset) of a plan: the kept channels of every group."""

    width: float
    offset: int
    plan: SlicePlan = field(repr=False)
    channels: Mapping[int, np.ndarray] = field(repr=False, compare=False)

    # -------------------------------------------------------------- helpers
    def _features(self, d: DimSlice) -> np.ndarray:
        """Kept positions along a dim: whole ``multiplier`` blocks of the kept channels."""
        ch = self.channels[d.group]
        if d.multiplier == 1:
            return ch
        return (ch[:, None] * d.multiplier + np.arange(d.multiplier)).reshape(-1)

    def _leading(self, group: int) -> bool:
        ch = self.channels[group]
        return int(ch[-1]) == len(ch) - 1  # sorted and distinct: 0..k-1

    def _full_size(self, name: str, d: DimSlice, size: int) -> None:
        expected = self.plan.groups[d.group] * d.multiplier
        if size != expected:
            raise ValueError(
                f"{name!r} dim {d.dim} has size {size}, the full model's is {expected}"
            )

    # -------------------------------------------------------------- numpy side (server)
    def slice(self, named: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """Sliced copies of full-size arrays, same names and order (what a client receives)."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, array in named.items():
            a = np.array(array, copy=True)
            for d in self.plan.dims.get(name, ()):
                self._full_size(name, d, a.shape[d.dim])
                a = np.take(a, self._features(d), axis=d.dim)
            out[name] = a
        return out

    def flat_index(self, full: ParamSpec) -> np.ndarray:
        """Position in ``full.flatten`` of each element of the sliced flat vector.

        The sliced vector is ``ParamSpec.of(self.slice(arrays)).flatten(...)``; scattering it to
        these positions puts every value back where it came from (int64, sliced-vector order).
        """
        parts: list[np.ndarray] = []
        base = 0
        for name, shape in zip(full.names, full.shapes, strict=True):
            n = math.prod(shape)
            by_dim = {d.dim: d for d in self.plan.dims.get(name, ())}
            if not by_dim:
                parts.append(np.arange(base, base + n, dtype=np.int64))
            else:
                axes = []
                for dim, size in enumerate(shape):
                    if dim in by_dim:
                        self._full_size(name, by_dim[dim], size)
                        axes.append(self._features(by_dim[dim]))
                    else:
                        axes.append(np.arange(size, dtype=np.int64))
                strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
                lin = sum(
                    (g * s for g, s in zip(np.ix_(*axes), strides, strict=True)),
                    start=np.zeros((), dtype=np.int64),
                )
                parts.append(base + np.asarray(lin, dtype=np.int64).reshape(-1))
            base += n
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def mask(self, full: ParamSpec) -> np.ndarray:
        """Bool ``[full.size]``: the full-vector coordinates this slice holds."""
        m = np.zeros(full.size, dtype=bool)
        m[self.flat_index(full)] = True
        return m

    # -------------------------------------------------------------- torch side (client)
    def submodel(self, model: nn.Module) -> nn.Module:
        """A narrow deep copy of ``model`` that trains and runs on its own.

        Raises ValueError if the width leaves it inconsistent (an unknown tensor left whole
        next to a sliced group), checked by running the example input through it.
        """
        sub = copy.deepcopy(model)
        with torch.no_grad():
            for name, dims in self.plan.dims.items():
                path, _, attr = name.rpartition(".")
                module = sub.get_submodule(path)
                old = getattr(module, attr)
                new = old.detach()
                for d in dims:
                    self._full_size(name, d, new.shape[d.dim])
                    idx = torch.tensor(self._features(d), dtype=torch.int64, device=new.device)
                    new = new.index_select(d.dim, idx)
                if isinstance(old, nn.Parameter):
                    setattr(module, attr, nn.Parameter(new.clone(), old.requires_grad))
                else:
                    setattr(module, attr, new.clone())
        for a in self.plan.attrs:
            module = sub.get_submodule(a.module)
            value = len(self.channels[a.group]) * a.multiplier
            if a.position is None:
                setattr(module, a.attr, value)
            else:
                old_shape = tuple(getattr(module, a.attr))
                pos = a.position
                setattr(module, a.attr, (*old_shape[:pos], value, *old_shape[pos + 1 :]))
        self._check(sub)
        return sub

    def _check(self, sub: nn.Module) -> None:
        """Run the example through ``sub``; name the likely culprits if it breaks."""
        plan = self.plan
        suspects = sorted({
            n
            for g, names in plan.unsliced_neighbours.items()
            if len(self.channels[g]) < plan.groups[g]
            for n in names
        })  # fmt: skip
        where = f"{plan.model_name} at width {self.width!r}"
        hint = f"tensors left unsliced next to sliced channels: {suspects or 'none found'}"
        x = torch.zeros(1, *plan.input_shape, **_example_kwargs(sub))
        flags = [(m, m.training) for m in sub.modules()]
        sub.eval()
        try:
            with torch.no_grad():
                out = sub(x)
        except Exception as err:
            raise ValueError(f"{where}: the sub-model is inconsistent ({err}); {hint}") from err
        finally:
            for m, training in flags:
                m.training = training
        shapes = tuple(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        if shapes != plan.output_shapes:
            raise ValueError(
                f"{where}: the sub-model's outputs {shapes} differ from the model's "
                f"{plan.output_shapes}; {hint}"
            )

    def views(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Differentiable slices of full- or wider-width tensors (FjORD ordered dropout).

        Leading slices are nested, so the tensors may come from any sub-model of width >= this
        one (basic slicing: views sharing storage and gradients); rolling windows need the
        full-size tensors (``index_select``). Pass buffers through too when the model has any
        sliced ones (BatchNorm statistics).
        """
        out: dict[str, torch.Tensor] = {}
        for name, tensor in params.items():
            t = tensor
            for d in self.plan.dims.get(name, ()):
                full = self.plan.groups[d.group] * d.multiplier
                want = len(self.channels[d.group]) * d.multiplier
                size = t.shape[d.dim]
                if self._leading(d.group):
                    if size % d.multiplier or not want <= size <= full:
                        raise ValueError(
                            f"{name!r} dim {d.dim} has size {size}: need a width of at least "
                            f"{self.width!r} ({want}..{full} in steps of {d.multiplier})"
                        )
                    if size != want:
                        t = t.narrow(d.dim, 0, want)
                else:
                    if size != full:
                        raise ValueError(
                            f"{name!r} dim {d.dim} has size {size}: a rolling window "
                            f"(offset {self.offset}) needs the full size {full}"
                        )
                    idx = torch.tensor(self._features(d), dtype=torch.int64, device=t.device)
                    t = t.index_select(d.dim, idx)
            out[name] = t
        return out


def _example_kwargs(model: nn.Module) -> dict[str, Any]:
    """The dtype and device of a zero example input: the model's first floating tensor's."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return {"dtype": t.dtype, "device": t.device}
    return {"dtype": torch.float32}


# ------------------------------------------------------------------ graph analysis
@dataclass(frozen=True)
class _Feat:
    """A tensor's channel axis: group, entries per channel along it, and which axis."""

    group: int
    mult: int
    axis: int


_Slot = tuple[int, int] | None  # (group, multiplier) or explicitly whole
_Key = tuple[str, str, int]  # ("t", tensor name, dim) or ("a", "module\0attr", position or -1)


class _Analysis:
    """One forward walk over the fx graph, binding tensor dims to union-find channel groups."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        self.parent: list[int] = []
        self.size: list[int] = []
        self.pinned: list[bool] = []
        self.info: dict[fx.Node, _Feat | None] = {}
        self.slots: dict[_Key, _Slot] = {}
        self.out_groups: dict[str, int] = {}
        self.norm_rules: list[tuple[str, int, int, int]] = []
        self.neighbours: dict[int, set[str]] = {}

    # -------------------------------------------------------------- union-find
    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.pinned.append(False)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = sorted((self.find(a), self.find(b)))
        if ra == rb:
            return
        self.parent[rb] = ra
        self.pinned[ra] = self.pinned[ra] or self.pinned[rb] or self.size[ra] != self.size[rb]

    def pin(self, g: int) -> None:
        self.pinned[self.find(g)] = True

    def bind(self, key: _Key, slot: _Slot) -> None:
        """Tie a tensor dim (or size attribute) to a group; disagreeing calls pin it whole."""
        if key not in self.slots:
            self.slots[key] = slot
            return
        old = self.slots[key]
        if old is None or slot is None:
            for s in (old, slot):
                if s is not None:
                    self.pin(s[0])
        elif old[1] != slot[1]:
            self.pin(old[0])
            self.pin(slot[0])
        else:
            self.union(old[0], slot[0])

    def bind_tensor(self, module: str, tensor: str, dim: int, f: _Feat | None) -> None:
        self.bind(("t", f"{module}.{tensor}" if module else tensor, dim), _slot(f))

    def bind_attr(self, module: str, attr: str, f: _Feat | None, position: int = -1) -> None:
        self.bind(("a", f"{module}\0{attr}", position), _slot(f))

    # -------------------------------------------------------------- walk
    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None

    def feat(self, node: Any) -> _Feat | None:
        return self.info.get(node) if isinstance(node, fx.Node) else None

    def pin_inputs(self, node: fx.Node) -> None:
        for n in node.all_input_nodes:
            f = self.info.get(n)
            if f is not None:
                self.pin(f.group)

    def walk(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self.info[node] = None
            elif node.op == "output":
                self.pin_inputs(node)  # output dims are never sliced
            elif "tensor_meta" not in node.meta:
                self.info[node] = None  # x.size(0) and the like: no tensor, nothing to follow
            elif node.op == "call_module":
                self.info[node] = self.call_module(node, self.gm.get_submodule(node.target))
            else:
                self.info[node] = self.call_op(node)

    def call_op(self, node: fx.Node) -> _Feat | None:
        t = node.target
        if node.op == "call_method":
            kind = (
                "elementwise"
                if t in _ELEMENTWISE_METHODS
                else "reshape"
                if t in _RESHAPE_METHODS
                else None
            )
        else:
            kind = (
                "elementwise"
                if t in _ELEMENTWISE_FUNCTIONS
                else "pool"
                if t in _POOL_FUNCTIONS
                else "reshape"
                if t in _RESHAPE_FUNCTIONS
                else None
            )
        if kind == "elementwise":
            return self.elementwise(node)
        if kind == "pool":
            return self.pool(node)
        if kind == "reshape":
            return self.reshape(node)
        self.pin_inputs(node)  # an op the walk cannot follow keeps its inputs whole
        return None

    def elementwise(self, node: fx.Node) -> _Feat | None:
        """Shape-preserving (broadcasting) ops: every operand's group merges into one."""
        out = self.shape(node)
        if out is None:
            self.pin_inputs(node)
            return None
        feats: list[_Feat] = []
        plain: list[tuple[fx.Node, tuple[int, ...], int]] = []
        for n in node.all_input_nodes:
            shape = self.shape(n)
            if shape is None:
                continue
            lead = len(out) - len(shape)
            f = self.info.get(n)
            if f is None:
                plain.append((n, shape, lead))
            else:
                feats.append(_Feat(f.group, f.mult, f.axis + lead))
        if not feats:
            return None
        first = feats[0]
        for f in feats[1:]:
            self.union(first.group, f.group)
            if (f.axis, f.mult) != (first.axis, first.mult):
                self.pin(first.group)
        for n, shape, lead in plain:
            axis = first.axis - lead
            if 0 <= axis < len(shape) and shape[axis] > 1:
                if n.op == "get_attr":  # an unknown parameter: left whole, named if it breaks
                    self.neighbours.setdefault(first.group, set()).add(str(n.target))
                else:  # e.g. the model input added to a hidden tensor
                    self.pin(first.group)
        return first

    def pool(self, node: fx.Node) -> _Feat | None:
        """Channel-wise spatial ops on ``(N, C, ...)``: the group stays on axis 1."""
        f = self.feat(node.args[0] if node.args else None)
        if f is not None and (f.axis, f.mult) != (1, 1):
            self.pin(f.group)
        return f

    def reshape(self, node: fx.Node) -> _Feat | None:
        """A flatten / view / reshape that keeps the dims before the channel axis."""
        src = node.args[0] if node.args else None
        f = self.feat(src)
        if f is None:
            return None
        in_shape, out_shape = self.shape(src), self.shape(node)
        moved = None if in_shape is None or out_shape is None else _reshaped(f, in_shape, out_shape)
        if moved is None:
            self.pin(f.group)
        return moved

    def call_module(self, node: fx.Node, mod: nn.Module) -> _Feat | None:
        name = str(node.target)
        x = node.args[0] if node.args else node.kwargs.get("input")
        f = self.feat(x)
        in_shape = self.shape(x)
        if isinstance(mod, nn.Linear):
            if f is not None and in_shape is not None and f.axis != len(in_shape) - 1:
                self.pin(f.group)
            return self.producer(
                node,
                name=name,
                mod=mod,
                out_size=mod.out_features,
                f=f,
                in_attr="in_features",
                out_axis=-1,
            )
        if isinstance(mod, _CONVS):
            assert isinstance(mod, nn.modules.conv._ConvNd)
            if mod.groups != 1:
                raise ValueError(
                    f"{name!r} ({type(mod).__name__}) is a grouped convolution "
                    f"(groups={mod.groups}); only groups=1 can be sliced"
                )
            if f is not None and (f.axis, f.mult) != (1, 1):
                self.pin(f.group)
            return self.producer(
                node,
                name=name,
                mod=mod,
                out_size=mod.out_channels,
                f=f,
                in_attr="in_channels",
                out_axis=1,
            )
        if isinstance(mod, _CHANNEL_NORMS):
            return self.channel_norm(name, mod, f)
        if isinstance(mod, nn.LayerNorm):
            return self.layer_norm(name, mod, f, in_shape)
        return self.call_plain_module(node, name, mod, f)

    def call_plain_module(
        self, node: fx.Node, name: str, mod: nn.Module, f: _Feat | None
    ) -> _Feat | None:
        """Parameter-free (or per-channel PReLU) modules, and the fallback for unknown ones."""
        if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
            if f is not None and f.axis != 1:
                self.pin(f.group)
            self.bind_tensor(name, "weight", 0, f)
            self.bind_attr(name, "num_parameters", f)
            return f
        if isinstance(mod, (*_ELEMENTWISE_MODULES, nn.PReLU)):
            return self.elementwise(node)
        if isinstance(mod, _POOL_MODULES):
            return self.pool(node)
        if isinstance(mod, nn.Flatten):
            return self.reshape(node)
        self.pin_inputs(node)  # unknown module: its tensors stay whole, so do its inputs
        return None

    def producer(
        self,
        node: fx.Node,
        *,
        name: str,
        mod: nn.Module,
        out_size: int,
        f: _Feat | None,
        in_attr: str,
        out_axis: int,
    ) -> _Feat:
        """A Linear / Conv: its input dim follows ``f``; its output opens (or reuses) a group."""
        if name not in self.out_groups:
            self.out_groups[name] = self.new(out_size)
        g = _Feat(self.out_groups[name], 1, 0)
        self.bind_tensor(name, "weight", 1, f)
        self.bind_attr(name, in_attr, f)
        self.bind_tensor(name, "weight", 0, g)
        self.bind_attr(name, in_attr.replace("in_", "out_"), g)
        if getattr(mod, "bias", None) is not None:
            self.bind_tensor(name, "bias", 0, g)
        out = self.shape(node)
        axis = out_axis if out_axis >= 0 or out is None else len(out) + out_axis
        return _Feat(g.group, 1, axis)

    def channel_norm(self, name: str, mod: nn.Module, f: _Feat | None) -> _Feat | None:
        """BatchNorm / InstanceNorm / GroupNorm over axis 1 follow their input's group."""
        if f is not None and f.axis != 1:
            self.pin(f.group)
        for t in _NORM_TENSORS:
            if getattr(mod, t, None) is not None:
                self.bind_tensor(name, t, 0, f)
        if isinstance(mod, nn.GroupNorm):
            self.bind_attr(name, "num_channels", f)
            if f is not None and mod.num_groups > 1:
                self.norm_rules.append((name, f.group, f.mult, mod.num_groups))
        else:
            self.bind_attr(name, "num_features", f)
        return f

    def layer_norm(
        self, name: str, mod: nn.LayerNorm, f: _Feat | None, in_shape: tuple[int, ...] | None
    ) -> _Feat | None:
        """LayerNorm: sliced where its normalized dims include the channel axis."""
        if f is None or in_shape is None:
            return f
        first = len(in_shape) - len(mod.normalized_shape)
        if f.axis >= first:
            pos = f.axis - first
            for t in ("weight", "bias"):
                if getattr(mod, t, None) is not None:
                    self.bind_tensor(name, t, pos, f)
            self.bind_attr(name, "normalized_shape", f, pos)
        return f

    # -------------------------------------------------------------- result
    def plan(
        self, *, model_name: str, input_shape: tuple[int, ...], output_shapes: Any
    ) -> SlicePlan:
        self.walk()
        live = sorted({self.find(g) for g in range(len(self.parent))} - {
            self.find(g) for g in range(len(self.parent)) if self.pinned[self.find(g)]
        })  # fmt: skip
        ids = {root: i for i, root in enumerate(live)}

        def gid(slot: _Slot) -> int | None:
            return None if slot is None else ids.get(self.find(slot[0]))

        state = self.model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        found: dict[str, list[DimSlice]] = {}
        attrs = []
        for (kind, key, pos), slot in self.slots.items():
            g = gid(slot)
            if g is None or slot is None:
                continue
            if kind == "t":
                found.setdefault(key, []).append(DimSlice(dim=pos, group=g, multiplier=slot[1]))
            else:
                module, attr = key.split("\0")
                attrs.append(AttrSlice(module, attr, g, slot[1], None if pos < 0 else pos))
        dims = {t: tuple(sorted(found[t], key=lambda d: d.dim)) for t in state if t in found}
        rules = []
        for module, group, mult, num_groups in self.norm_rules:
            g = ids.get(self.find(group))
            if g is not None:
                rules.append(GroupNormRule(module, g, mult, num_groups))
        neighbours: dict[int, set[str]] = {}
        for group, names in self.neighbours.items():
            g = ids.get(self.find(group))
            if g is not None:
                neighbours.setdefault(g, set()).update(names)
        return SlicePlan(
            model_name=model_name,
            input_shape=input_shape,
            groups={i: self.size[root] for root, i in ids.items()},
            dims=dims,
            shapes=shapes,
            param_names=frozenset(n for n, _ in self.model.named_parameters()),
            attrs=tuple(attrs),
            group_norms=tuple(rules),
            unsliced_neighbours={g: tuple(sorted(n)) for g, n in sorted(neighbours.items())},
            output_shapes=tuple(output_shapes),
        )


def _slot(f: _Feat | None) -> _Slot:
    return None if f is None else (f.group, f.mult)


def _reshaped(f: _Feat, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> _Feat | None:
    """The channel axis after a reshape, if it only merges the channel axis with trailing dims.

    Flattening ``(N, C, H, W)`` to ``(N, C*H*W)`` keeps channel ``c`` in the block
    ``c*H*W .. (c+1)*H*W - 1``: same axis, multiplier times ``H*W``.
    """
    if in_shape == out_shape:
        return f
    a = f.axis
    if a < 1 or len(out_shape) <= a or out_shape[:a] != in_shape[:a]:
        return None  # the batch dim (and anything before the channels) must stay
    for end in range(a, len(in_shape)):
        if (
            math.prod(in_shape[a : end + 1]) == out_shape[a]
            and in_shape[end + 1 :] == out_shape[a + 1 :]
        ):
            return _Feat(f.group, f.mult * math.prod(in_shape[a + 1 : end + 1]), a)
    return None
