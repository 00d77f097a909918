"""Pure-torch reference implementations of every op: the test oracle and the fallback.

They favour clarity over speed and compute in float64 unless told otherwise. A compiled kernel is
right when it matches its reference here within the tolerance its test states.
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
