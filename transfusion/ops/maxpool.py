"""Max-pooling that keeps only its argmax indices for backward, not its input.

``nn.MaxPool2d`` under autograd saves its input and the indices. In a CBR model the input is the
block's ReLU output y, which nothing else needs once the fused conv-BN-ReLU op stopped saving it
(its backward recomputes the ReLU mask from the conv output), so keeping y for the pool alone
would hold a full activation per block. ``MaxPool2dSavingIndices`` saves the indices and the
input's shape; its backward is ATen's own ``max_pool2d_with_indices_backward`` (which reads only
the gradient and the indices, given an uninitialised tensor of the input's shape), so gradients
are bit for bit those of ``nn.MaxPool2d``. Without autograd (eval, ``no_grad``) it is plain
``F.max_pool2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transfusion.ops import dispatch


class _MaxPool2dSavingIndices(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        y, indices = torch.ops.aten.max_pool2d_with_indices(
            x, kernel_size, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(indices)
        ctx.input_meta = (x.shape, x.dtype, x.device, dispatch.memory_format(x))
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (indices,) = ctx.saved_tensors
        shape, dtype, device, memory_format = ctx.input_meta
        # read for its shape and layout only; never written or read as data
        shell = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_y, shell, *ctx.args, indices)
        return grad_x, None, None, None, None, None


class MaxPool2dSavingIndices(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments, same outputs and gradients) that saves only the argmax
    indices for backward. ``return_indices=True`` is not supported (use ``nn.MaxPool2d``)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> None:
        super().__init__(kernel_size, stride, padding, dilation, return_indices=False,
                         ceil_mode=ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                ceil_mode=self.ceil_mode)
        # nn.MaxPool2d already turned stride=None into kernel_size; ATen takes ints or pairs
        return _MaxPool2dSavingIndices.apply(x, self.kernel_size, self.stride, self.padding,
                                             self.dilation, self.ceil_mode)
