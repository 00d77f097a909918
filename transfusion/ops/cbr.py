"""Conv -> BatchNorm -> ReLU, the block of the paper's CBR models.

``CBR2d`` holds exactly the parameters and buffers of an eager ``Conv2d(bias=False)`` +
``BatchNorm2d`` pair under the same keys (``conv.weight``, ``bn.weight``, ``bn.bias``,
``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``), so checkpoints move freely
between the fused and the eager block. ``fused=False`` runs the eager modules.

``conv_bn_relu``:

* training: the convolution is ATen's (oneDNN / cuDNN, with its own backward); everything after
  it is fused: ``transfusion::bn_relu_stats_forward`` (batch statistics in one pass, then
  normalise + affine + ReLU in one pass) and, in backward, ``transfusion::bn_relu_backward``
  (ReLU mask recomputed from the conv output, BN reductions in one pass, grad in one pass; y is
  not kept for backward). Running statistics are updated in place as BatchNorm2d does
  (unbiased variance, ``momentum`` as the factor).
* inference: BatchNorm folded into the conv weight and bias, then an in-place ReLU: one conv and
  one pass over its output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transfusion.ops.bn_relu_train import bn_relu_train


def fold_bn(weight: torch.Tensor, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
            running_mean: torch.Tensor, running_var: torch.Tensor, eps: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with an eval-mode BatchNorm folded in.

    conv2d(x, w', b') == batch_norm(conv2d(x, w)) with the running statistics.
    """
    scale = bn_weight * torch.rsqrt(running_var + eps)
    folded_w = weight * scale.to(weight.dtype).reshape(-1, 1, 1, 1)
    folded_b = bn_bias - running_mean * scale
    return folded_w, folded_b.to(weight.dtype)


def conv_bn_relu(x, weight, bn_weight, bn_bias, running_mean, running_var, training: bool,
                 momentum: float = 0.1, eps: float = 1e-5, stride=1, padding=0) -> torch.Tensor:
    """relu(batch_norm(conv2d(x, weight))) with BatchNorm2d's semantics.

    ``training``: batch statistics; ``running_mean``/``running_var`` (may be None) are updated in
    place with factor ``momentum`` (BatchNorm2d's exponential average factor, a float or a 0-dim
    tensor: pass 1 / num_batches_tracked for momentum=None). Otherwise the running statistics are used, folded
    into the conv. ``num_batches_tracked`` is the caller's (``CBR2d`` counts it).
    """
    if training:
        y = F.conv2d(x, weight, None, stride, padding)
        out, mean, _invstd, var = bn_relu_train(y, bn_weight, bn_bias, eps)
        if running_mean is not None and running_var is not None:
            count = y.numel() // y.shape[1]
            with torch.no_grad():
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), momentum)
        return out
    if running_mean is None or running_var is None:
        raise ValueError("conv_bn_relu: eval mode needs running_mean and running_var; pass "
                         "training=True to use batch statistics")
    folded_w, folded_b = fold_bn(weight, bn_weight, bn_bias, running_mean, running_var, eps)
    return F.conv2d(x, folded_w, folded_b, stride, padding).relu_()


class CBR2d(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU with the eager block's state_dict keys."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | str = "same", eps: float = 1e-5, momentum: float | None = 0.1,
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
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average, as BatchNorm2d
                # a 0-dim tensor, not float(): no host sync, no graph break under torch.compile
                factor = (1.0 / bn.num_batches_tracked).to(bn.running_mean.dtype)
        use_batch_stats = bn.training or bn.running_mean is None
        update = bn.training and bn.track_running_stats
        return conv_bn_relu(x, self.conv.weight, bn.weight, bn.bias,
                            bn.running_mean if update or not use_batch_stats else None,
                            bn.running_var if update or not use_batch_stats else None,
                            use_batch_stats, factor, bn.eps, self.conv.stride, self.conv.padding)

    def extra_repr(self) -> str:
        return f"fused={self.fused}"
