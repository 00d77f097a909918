"""The normalise + affine + ReLU pass of a conv-BN-ReLU block: y = relu(x * scale[c] + shift[c]).

With scale = gamma / sqrt(var + eps) and shift = beta - mean * scale this is BatchNorm followed by
ReLU in one pass over memory. Compiled kernels: CPU float32/float64 (vectorised per CPU
capability) and CUDA; elsewhere (``dispatch.has_kernel``), or without the extension,
relu(x * scale + shift) in x's dtype with torch ops (the float64 ``reference.py`` is the tests'
oracle).
"""
from __future__ import annotations

import torch

from transfusion import _extension
from transfusion.errors import InputError
from transfusion.ops import dispatch, reference

_OP = "transfusion::scale_shift_relu"


def scale_shift_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """relu(x * scale + shift), scale and shift per channel (dim 1 of x, shape (N, C, *)).

    Differentiable in all three inputs. Works under torch.compile (the op has a fake kernel).
    """
    if x.dim() < 2 or scale.shape != (x.shape[1],) or shift.shape != (x.shape[1],):
        raise InputError(
            f"scale_shift_relu: x must be (N, C, ...) with scale and shift of shape (C,); got x "
            f"{tuple(x.shape)}, scale {tuple(scale.shape)}, shift {tuple(shift.shape)}"
        )
    if dispatch.has_kernel("scale_shift_relu", x):
        return torch.ops.transfusion.scale_shift_relu(x, scale, shift)
    y = x * reference._channel_view(scale, x) + reference._channel_view(shift, x)
    return torch.relu(y)


def _register() -> None:
    """Fake (meta) kernel and autograd formula for the compiled op, when it is loaded."""
    if not _extension.available():
        return

    @torch.library.register_fake(_OP)
    def _fake(x, scale, shift):
        torch._check(scale.shape[0] == x.shape[1])
        return torch.empty_like(x, memory_format=dispatch.memory_format(x))

    def _setup_context(ctx, inputs, output):
        x, scale, _ = inputs
        ctx.save_for_backward(x, scale, output)

    def _backward(ctx, grad):
        x, scale, y = ctx.saved_tensors
        g = grad * (y > 0)
        dims = [0] + list(range(2, x.dim()))
        grad_x = g * reference._channel_view(scale, x) if ctx.needs_input_grad[0] else None
        grad_scale = (g * x).sum(dims) if ctx.needs_input_grad[1] else None
        grad_shift = g.sum(dims) if ctx.needs_input_grad[2] else None
        return grad_x, grad_scale, grad_shift

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


_register()
