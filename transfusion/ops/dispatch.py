"""Which compiled op runs for which tensor, and what layout a tensor has: the one place.

Every op of ``transfusion.ops`` asks ``has_kernel(op, x)`` before it calls
``torch.ops.transfusion.<op>`` and ``memory_format(x)`` where it keeps or recreates a layout
(tests/ops/test_dispatch.py checks that no other module answers either question). Issue 13:
kernel detection was written three ways (a device set per module, a gram-only helper and
``_extension.op_available``) and the channels_last test seven times across Python, C++ and CUDA;
its C++ twin is csrc/include/transfusion/checks.h.

Where no kernel runs, each op computes with its own pure-torch fallback in the input's dtype
(not the float64 references of ``reference.py``, which are the tests' oracle).
"""
from __future__ import annotations

import torch

from transfusion import _extension

_CPU_BN_DTYPES = frozenset({torch.float32, torch.float64})

# op -> device type -> the dtypes its kernels take (None: every dtype the op itself accepts).
# The CPU BatchNorm kernels are float32/float64 only; CUDA's also take float16 / bfloat16.
KERNELS: dict[str, dict[str, frozenset[torch.dtype] | None]] = {
    "scale_shift_relu": {"cpu": _CPU_BN_DTYPES, "cuda": None},
    "bn_relu_stats_forward": {"cpu": _CPU_BN_DTYPES, "cuda": None},
    "bn_relu_backward": {"cpu": _CPU_BN_DTYPES, "cuda": None},
    "gram_pass": {"cpu": None, "cuda": None},
    "gram_pass_groups": {"cpu": None, "cuda": None},
}


def _loaded(name: str) -> bool:
    """The loaded extension has ``torch.ops.transfusion.<name>`` (one built before the op was
    added has not)."""
    try:
        getattr(torch.ops.transfusion, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _kernel_table() -> dict[str, dict[str, frozenset[torch.dtype] | None]]:
    built = _extension.kernel_device_types()
    return {op: {dev: dtypes for dev, dtypes in per_device.items() if dev in built}
            for op, per_device in KERNELS.items() if built and _loaded(op)}


# Read once at import, into plain dicts: torch.compile folds the lookups (it cannot trace the
# lru_cache'd loader in _extension).
_AVAILABLE = _kernel_table()


def has_kernel(op: str, x: torch.Tensor | torch.device | str, dtype: torch.dtype | None = None
               ) -> bool:
    """True when ``torch.ops.transfusion.<op>`` is loaded and has a kernel for ``x``: a tensor
    (its device type and dtype) or a device (then ``dtype``, if given, is checked). Every layout
    has one: the kernels take contiguous and channels_last tensors and make others contiguous."""
    if op not in KERNELS:
        raise ValueError(f"unknown transfusion op {op!r}; the ops are {sorted(KERNELS)}")
    if isinstance(x, torch.Tensor):
        device_type, dtype = x.device.type, x.dtype
    else:
        device_type = torch.device(x).type
    per_device = _AVAILABLE.get(op)
    if per_device is None or device_type not in per_device:
        return False
    dtypes = per_device[device_type]
    return dtypes is None or dtype is None or dtype in dtypes


def is_channels_last(x: torch.Tensor) -> bool:
    """x is a 4-D tensor laid out channels_last (NHWC) and not also plain contiguous (C == 1 or
    H * W == 1 are both): the kernels' and the fake kernels' one layout test."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the ops give their outputs for input x: channels_last or contiguous."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format
