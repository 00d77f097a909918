"""What autograd keeps for backward: the activation memory of a training forward, on any device.

``saved_activation_bytes(module, *inputs)`` runs ``module(*inputs)`` with saved-tensor hooks and
adds up the distinct storages autograd saves, not counting the module's own parameters and
buffers. The CBR benchmarks and tests compare fused and eager models with it; unlike
``torch.cuda.max_memory_allocated`` it needs no GPU and ignores transient buffers.
"""
from __future__ import annotations

import torch
from torch import nn


def saved_activation_bytes(module: nn.Module, *inputs: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs)
    own = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    return sum(nbytes for ptr, nbytes in storages.items() if ptr not in own)
