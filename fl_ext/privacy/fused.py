"""Per-sample clipped gradients from one forward and one backward pass (Linear and Conv2d nets).

For a Linear layer with per-sample inputs ``a_i`` and output gradients ``g_i``, the per-sample
weight gradient is ``g_i a_i^T``: its norm is ``||g_i|| ||a_i||`` and the *clipped sum* is
``(s * G)^T A`` -- one matrix product, the cost of the ordinary weight gradient. Conv2d is the
same on unfolded patches (``g_i U_i^T``, formed per sample with one batched product). So after
one backward pass to the layer outputs (``torch.autograd.grad``: no unclipped weight gradients
are computed), every per-sample norm and the clipped sum follow directly ("book-keeping",
Bu et al. 2023). Opacus' hooks materialise every per-sample gradient; its ghost clipping runs
two backward passes. Parameter-free layers (activations, pooling, flatten, dropout) are fine;
any other layer with parameters is refused by :func:`fused_supported` (use an Opacus mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv2d)


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names of layers with parameters that the fused path cannot clip per sample."""
    bad = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if not isinstance(module, SUPPORTED):
            bad.append(f"{name or 'model'} ({type(module).__name__})")
        elif isinstance(module, nn.Conv2d) and (
            module.groups != 1 or module.padding_mode != "zeros"
        ):
            bad.append(f"{name} (Conv2d with groups or non-zero padding mode)")
    return bad


def fused_supported(model: nn.Module) -> bool:
    """True when every layer with parameters is a Linear or plain Conv2d."""
    return not unsupported_layers(model)


class _Capture:
    """Forward hooks that keep each supported layer's input and output."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, SUPPORTED)]
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        self.inputs.append(inp[0].detach())
        self.outputs.append(out)

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _linear(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if a.dim() != 2:
        raise ValueError("fused DP-SGD supports Linear layers on [batch, features] inputs only")
    return (g * g).sum(1) * (a * a).sum(1), None


def _conv(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    patches = F.unfold(
        a,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,  # type: ignore[arg-type]
        stride=module.stride,
    )  # [B, Cin*k*k, L]
    per_sample = torch.bmm(g.flatten(2), patches.transpose(1, 2))  # [B, Cout, Cin*k*k]
    return per_sample.pow(2).sum((1, 2)), per_sample


class FusedClipper:
    """Clipped per-sample gradient sums, written into ``param.grad``, for one batch."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        bad = unsupported_layers(model)
        if bad:
            raise ValueError(f"fused DP-SGD cannot clip per sample through: {', '.join(bad)}")
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.capture = _Capture(model)

    def close(self) -> None:
        self.capture.close()

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Set ``p.grad`` to the sum over the batch of per-sample gradients clipped to C.

        Returns the mean loss of the batch.
        """
        cap = self.capture
        cap.clear()
        loss = F.cross_entropy(self.model(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, cap.outputs)
        sq = torch.zeros(len(x), dtype=torch.float32, device=x.device)
        per_layer = []
        for module, a, g in zip(cap.layers, cap.inputs, grads, strict=True):
            if isinstance(module, nn.Linear):
                norms, extra = _linear(a, g)
            else:
                norms, extra = _conv(module, a, g)
            bias_sq = (g.flatten(2).sum(2) if g.dim() > 2 else g).pow(2).sum(1)
            sq += norms + (bias_sq if module.bias is not None else 0.0)
            per_layer.append((module, a, g, extra))
        scale = torch.clamp(self.max_grad_norm / sq.sqrt().clamp(min=1e-12), max=1.0)
        for module, a, g, extra in per_layer:
            if isinstance(module, nn.Linear):
                gs = g * scale[:, None]
                module.weight.grad = gs.T @ a
                bias_grad = gs.sum(0)
            else:
                assert extra is not None
                weight = torch.einsum("b,bok->ok", scale, extra)
                module.weight.grad = weight.view_as(module.weight)
                bias_grad = (g.flatten(2).sum(2) * scale[:, None]).sum(0)
            if module.bias is not None:
                module.bias.grad = bias_grad
        cap.clear()
        return float(loss.detach()) / max(len(x), 1)
