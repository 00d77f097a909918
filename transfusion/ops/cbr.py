"""Conv -> BatchNorm -> ReLU, the block of the paper's CBR models.

``CBR2d`` holds exactly the parameters and buffers of an eager ``Conv2d(bias=False)`` +
``BatchNorm2d`` pair under the same keys (``conv.weight``, ``bn.weight``, ``bn.bias``,
``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``), so checkpoints move freely
between the fused and the eager block. ``fused=False`` runs the eager modules.

FOUNDATION STUB: ``conv_bn_relu`` below is the plain composition of ATen ops; the fused training
and inference kernels replace its body (issue 7) without changing this interface.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transfusion.ops.bn_relu import scale_shift_relu


def conv_bn_relu(x, weight, bn_weight, bn_bias, running_mean, running_var, training: bool,
                 momentum: float = 0.1, eps: float = 1e-5, stride=1, padding=0) -> torch.Tensor:
    """relu(batch_norm(conv2d(x, weight))) with BatchNorm2d's semantics (running stats updated
    in place when training)."""
    y = F.conv2d(x, weight, None, stride, padding)
    if training:
        y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, True, momentum, eps)
        return torch.relu(y)
    scale = bn_weight * torch.rsqrt(running_var + eps)
    shift = bn_bias - running_mean * scale
    return scale_shift_relu(y, scale, shift)


class CBR2d(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU with the eager block's state_dict keys."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | str = "same", eps: float = 1e-5, momentum: float = 0.1,
                 fused: bool = True) -> None:
        super().__init__()
        if padding == "same":
            if stride != 1 or kernel_size % 2 == 0:
                raise ValueError("padding='same' needs stride 1 and an odd kernel size")
            padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return torch.relu(self.bn(self.conv(x)))
        bn = self.bn
        training = bn.training or bn.running_mean is None
        if bn.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        return conv_bn_relu(x, self.conv.weight, bn.weight, bn.bias, bn.running_mean,
                            bn.running_var, training, bn.momentum, bn.eps, self.conv.stride,
                            self.conv.padding)

    def extra_repr(self) -> str:
        return f"fused={self.fused}"
