"""A frozen backbone with LoRA adapters whose state is only what travels.

Federated fine-tuning through adapters sends only A and B (FFA: only B). Wrapping the adapted
model so that ``state_dict()`` holds exactly those tensors lets every part that moves weights
(the engine, checkpoints, schema checks, evaluation, the registry) work unchanged: the
backbone is a constant both sides load from the same file (its SHA-256 checked), never a
parameter of the federation.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_ext.models.lora import LoraSpec, adapter_state, add_adapters, load_adapter_state


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_backbone(model: nn.Module, path: str | Path, *, sha256: str | None = None) -> str:
    """Load a backbone state (``torch.save(model.state_dict())``) into ``model``; its SHA-256.

    ValueError when the file is missing, its hash is not ``sha256``, or it does not fit.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"backbone file {str(file)!r} does not exist")
    digest = file_sha256(file)
    if sha256 is not None and digest != sha256:
        raise ValueError(
            f"backbone {str(file)!r} has SHA-256 {digest[:12]}..., expected {sha256[:12]}...: "
            "not the backbone the federation was started with"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"backbone {str(file)!r} does not fit the model: {err}") from err
    return digest


class AdaptedModel(nn.Module):
    """``inner`` (a backbone) with adapters; its state is the adapters that travel."""

    def __init__(self, backbone: nn.Module, spec: LoraSpec) -> None:
        super().__init__()
        self.num_classes = getattr(backbone, "num_classes", None)
        self.input_shape = getattr(backbone, "input_shape", None)
        self.spec = spec
        self.inner = add_adapters(backbone, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Only the travelling adapter tensors (FFA: only B), as tensors."""
        keep_vars = bool(kwargs.get("keep_vars", False))
        named = dict(self.inner.named_parameters())
        return OrderedDict(
            (name, named[name] if keep_vars else named[name].detach())
            for name in adapter_state(self.inner)
        )

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load adapter tensors (strict: names and shapes must match)."""
        if not strict or assign:
            raise ValueError("adapter state loads strictly (strict=True, assign=False)")
        arrays = OrderedDict(
            (k, v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in state_dict.items()
        )
        load_adapter_state(self.inner, arrays)
        return nn.modules.module._IncompatibleKeys([], [])
