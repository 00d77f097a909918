"""Pure-torch reference implementations of every op: the test oracle (and ``transfusion check``'s).

They favour clarity over speed and compute in float64 unless told otherwise. A compiled kernel is
right when it matches its reference here within the tolerance its test states. They are not the
fallback: where no kernel runs (``ops.dispatch.has_kernel``), each op computes with its own torch
code in the input's dtype (bn_relu.py, bn_relu_train._composite), tested against these.
"""
from __future__ import annotations

import torch


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, ..., 1) to broadcast over x of shape (N, C, *)."""
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def scale_shift_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """relu(x * scale[c] + shift[c]) over the channel dim 1, computed in float64, cast back."""
    y = x.double() * _channel_view(scale.double(), x) + _channel_view(shift.double(), x)
    return torch.relu(y).to(x.dtype)


# ---- conv -> BatchNorm -> ReLU (CBR) ------------------------------------------------------------


def bn_relu_train(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm (batch statistics over all dims but 1) then ReLU, in float64.

    Returns (y, mean, invstd, var) with var the biased batch variance; y in x's dtype, the
    statistics in float64.
    """
    xd = x.double()
    dims = [0] + list(range(2, x.dim()))
    mean = xd.mean(dims)
    var = ((xd - _channel_view(mean, x)) ** 2).mean(dims)
    invstd = torch.rsqrt(var + eps)
    y = (xd - _channel_view(mean, x)) * _channel_view(invstd * weight.double(), x)
    y = torch.relu(y + _channel_view(bias.double(), x))
    return y.to(x.dtype), mean, invstd, var


def conv_bn_relu(x: torch.Tensor, weight: torch.Tensor, bn_weight: torch.Tensor,
                 bn_bias: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                 training: bool, momentum: float = 0.1, eps: float = 1e-5, stride=1, padding=0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conv2d(no bias) -> BatchNorm2d -> ReLU in float64, without touching its inputs.

    Returns (y, new_running_mean, new_running_var) (float64) as BatchNorm2d would leave them:
    training updates them with the unbiased batch variance and factor ``momentum``; eval uses them.
    """
    conv = torch.nn.functional.conv2d(x.double(), weight.double(), None, stride, padding)
    if training:
        y, mean, _, var = bn_relu_train(conv, bn_weight, bn_bias, eps)
        count = conv.numel() // conv.shape[1]
        unbiased = var * count / (count - 1)
        new_mean = running_mean.double() * (1 - momentum) + mean * momentum
        new_var = running_var.double() * (1 - momentum) + unbiased * momentum
        return y, new_mean, new_var
    invstd = torch.rsqrt(running_var.double() + eps)
    y = (conv - _channel_view(running_mean.double(), conv)) * _channel_view(
        invstd * bn_weight.double(), conv)
    y = torch.relu(y + _channel_view(bn_bias.double(), conv))
    return y, running_mean.double().clone(), running_var.double().clone()
