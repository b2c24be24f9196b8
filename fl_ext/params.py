"""Model weights as named numpy arrays, and their flat ``[d]`` tensor view for aggregation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and dtypes of a model's arrays: what every reply must match."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> ParamSpec:
        """Spec of named arrays, in their order."""
        return cls(
            names=tuple(arrays),
            shapes=tuple(tuple(a.shape) for a in arrays.values()),
            dtypes=tuple(np.dtype(a.dtype) for a in arrays.values()),
        )

    @property
    def size(self) -> int:
        """Total number of scalars."""
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def flatten(
        self, arrays: Mapping[str, np.ndarray], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Concatenate arrays (in spec order) into one float32 vector, optionally into ``out``."""
        flat = out if out is not None else torch.empty(self.size, dtype=torch.float32)
        offset = 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = int(np.prod(shape))
            flat[offset : offset + n].copy_(
                torch.from_numpy(np.ascontiguousarray(arrays[name])).reshape(-1)
            )
            offset += n
        return flat

    def unflatten(self, flat: torch.Tensor) -> OrderedDict[str, np.ndarray]:
        """Split a flat vector back into named arrays with the spec's shapes and dtypes."""
        if flat.numel() != self.size:
            raise ValueError(f"flat vector has {flat.numel()} values, spec needs {self.size}")
        values = flat.detach().cpu().numpy()
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        offset = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape))
            out[name] = values[offset : offset + n].reshape(shape).astype(dtype, copy=True)
            offset += n
        return out


def get_weights(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The model's state as named numpy arrays (copies)."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> None:
    """Load arrays (by name, or positionally in state-dict order) into the model, strictly."""
    keys = list(model.state_dict())
    values = list(arrays.values()) if isinstance(arrays, Mapping) else list(arrays)
    if isinstance(arrays, Mapping) and list(arrays) != keys:
        raise ValueError(f"array names {list(arrays)} differ from the model's {keys}")
    if len(values) != len(keys):
        raise ValueError(f"got {len(values)} arrays, the model has {len(keys)}")
    state = OrderedDict(
        (k, torch.as_tensor(np.asarray(v))) for k, v in zip(keys, values, strict=True)
    )
    model.load_state_dict(state, strict=True)
