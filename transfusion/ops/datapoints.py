"""Conv activations (N, C, H, W) -> a (datapoints, neurons) matrix for (SV)CCA.

Each spatial position of each image is a datapoint and each channel a neuron (docs/paper.md). CCA
needs many more datapoints than neurons: aim for datapoints >= 10 x neurons (a warning says when
a matrix falls below that). Two knobs trade datapoints for memory and make layers comparable:

  * ``pool=(h, w)`` (or an int for a square grid): adaptive average pooling to an h x w grid first.
    Layers of different resolutions must reach ONE grid to be compared (their datapoints must be
    the same images at the same positions).
  * ``max_positions=k``: keep k spatial positions per image, the same k for every image, drawn
    without replacement from a generator seeded with ``seed``: equal grids with equal seeds give
    equal positions, so call it with the same seed for the two layers you compare.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from transfusion.errors import InputError

MIN_RATIO = 10


def conv_to_datapoints(act: torch.Tensor, pool: int | tuple[int, int] | None = None,
                       max_positions: int | None = None, seed: int = 0,
                       warn: bool = True) -> torch.Tensor:
    """(N, C, H, W) -> (N*h*w, C) (after optional pooling / position subsampling); (n, C) passes.

    Rows are ordered image by image, positions row-major. The result shares no memory with act.
    """
    if not isinstance(act, torch.Tensor):
        raise InputError(f"conv_to_datapoints takes a torch tensor, got {type(act).__name__}")
    if act.dim() == 2:
        out = act
    elif act.dim() in (3, 4):
        a = act if act.dim() == 4 else act.unsqueeze(-1)  # (N, C, L) -> (N, C, L, 1)
        if pool is not None:
            size = (pool, pool) if isinstance(pool, int) else tuple(pool)
            if act.dim() == 3:
                size = (size[0], 1)
            a = F.adaptive_avg_pool2d(a, size)
        n, c, h, w = a.shape
        flat = a.flatten(2)  # (N, C, P)
        if max_positions is not None and max_positions < h * w:
            if max_positions < 1:
                raise InputError(f"max_positions must be >= 1, got {max_positions}")
            g = torch.Generator().manual_seed(int(seed))
            pos = torch.randperm(h * w, generator=g)[:max_positions].sort().values.to(a.device)
            flat = flat.index_select(2, pos)
        out = flat.permute(0, 2, 1).reshape(-1, c)
    else:
        raise InputError(f"conv_to_datapoints expects (N, C, H, W), (N, C, L) or (n, C); got "
                         f"shape {tuple(act.shape)}")
    if warn and out.shape[0] < MIN_RATIO * out.shape[1]:
        warnings.warn(
            f"{out.shape[0]} datapoints for {out.shape[1]} neurons (< {MIN_RATIO}x): CCA values "
            f"are biased upwards with so few datapoints; feed more images or pool less",
            RuntimeWarning, stacklevel=2)
    return out
