"""Training-mode BatchNorm + ReLU on a conv output: the fused part of a CBR block.

Two compiled ops (schemas in csrc/registration.cpp, CPU and CUDA kernels):

* ``transfusion::bn_relu_stats_forward(x, weight, bias, eps) -> (y, mean, invstd, var)``:
  per-channel batch mean and biased variance in one pass over x (chunked two-pass in cache,
  merged with Chan's formula: stable for large N*H*W), then y = relu(BN(x)) in one pass.
* ``transfusion::bn_relu_backward(grad_y, x, weight, bias, mean, var, eps) -> (grad_x, grad_w,
  grad_b)``: the BN backward with the ReLU mask fused in and recomputed from x (z = x * scale +
  shift > 0, evaluated by the same code as the forward, so it is the forward's mask bit for bit):
  one reduction pass over (g, x) and one elementwise pass. Five passes over memory in all.

Autograd for the forward op is registered here (``torch.library.register_autograd``) with fake
kernels for both, so ``torch.compile(fullgraph=True)`` traces through. Saved for backward: x (the
conv output) and (C,) vectors only. Eager ``relu(batch_norm(x))`` keeps x and y; this keeps half
of that (y lives on only if the next layer keeps it).
"""
from __future__ import annotations

import torch

from transfusion import _extension
from transfusion.errors import InputError
from transfusion.ops import dispatch, reference

_FWD = "transfusion::bn_relu_stats_forward"
_BWD = "transfusion::bn_relu_backward"


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def bn_relu_train(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """relu(batch_norm(x)) with batch statistics, x of shape (N, C, *).

    Returns (y, mean, invstd, var): var is the biased batch variance (BatchNorm2d's running_var
    takes the unbiased one: var * M / (M - 1) with M = x.numel() // C). Differentiable in x,
    weight and bias through y; the statistics carry no gradient.
    """
    if x.dim() < 2 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise InputError(
            f"bn_relu_train: x must be (N, C, ...) with weight and bias of shape (C,); got x "
            f"{tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )
    if x.numel() // max(x.shape[1], 1) <= 1:
        raise InputError(
            f"bn_relu_train: expected more than 1 value per channel when training, got input of "
            f"size {tuple(x.shape)}; use a larger batch or put the block in eval mode"
        )
    if dispatch.has_kernel("bn_relu_stats_forward", x):
        if x.device.type == "cpu" and weight.dtype != x.dtype:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        y, mean, invstd, var = torch.ops.transfusion.bn_relu_stats_forward(
            x, weight, bias, float(eps))
        # The backward ignores gradients reaching the statistics: make that explicit.
        return y, mean.detach(), invstd.detach(), var.detach()
    return _composite(x, weight, bias, eps)


def _composite(x, weight, bias, eps):
    """ATen fallback (no extension, or a device/dtype without kernels): same outputs."""
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(x.to(_stats_dtype(x)), dims, correction=0)
    invstd = torch.rsqrt(var + eps)
    scale = weight.to(invstd.dtype) * invstd
    shift = bias.to(invstd.dtype) - mean * scale
    y = x * reference._channel_view(scale, x).to(x.dtype) + reference._channel_view(
        shift, x).to(x.dtype)
    return torch.relu(y), mean.detach(), invstd.detach(), var.detach()


def _register() -> None:
    if not _extension.available():
        return

    @torch.library.register_fake(_FWD)
    def _fake_forward(x, weight, bias, eps):
        torch._check(weight.shape[0] == x.shape[1])
        c = x.shape[1]
        stats = _stats_dtype(x)
        y = torch.empty_like(x, memory_format=dispatch.memory_format(x))
        return (y, x.new_empty((c,), dtype=stats), x.new_empty((c,), dtype=stats),
                x.new_empty((c,), dtype=stats))

    @torch.library.register_fake(_BWD)
    def _fake_backward(grad_y, x, weight, bias, mean, var, eps):
        torch._check(weight.shape[0] == x.shape[1])
        c = x.shape[1]
        return (torch.empty_like(x, memory_format=dispatch.memory_format(x)),
                weight.new_empty((c,)), weight.new_empty((c,)))

    def _setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        _y, mean, _invstd, var = output
        ctx.save_for_backward(x, weight, bias, mean, var)
        ctx.eps = eps

    def _backward(ctx, grad_y, _grad_mean, _grad_invstd, _grad_var):
        x, weight, bias, mean, var = ctx.saved_tensors
        if grad_y is None:
            return None, None, None, None
        grad_x, grad_w, grad_b = torch.ops.transfusion.bn_relu_backward(
            grad_y, x, weight, bias, mean, var, ctx.eps)
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_w if ctx.needs_input_grad[1] else None,
                grad_b if ctx.needs_input_grad[2] else None, None)

    torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)


_register()
