"""Loads the compiled extension ``transfusion._C`` and says what was built.

The package works without it: every op runs its own pure-torch fallback in the input's dtype (not
the float64 references of ``ops/reference*.py``, which are the tests' oracle), and one warning says
why the extension is missing and how to build it. ``transfusion info`` prints ``build_info()``.
"""
from __future__ import annotations

import importlib
import logging
import os
import warnings
from functools import lru_cache
from typing import Any

import torch

log = logging.getLogger(__name__)

_BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` in an environment where torch is "
    "installed (see README.md)"
)


@lru_cache(maxsize=1)
def _load() -> tuple[Any | None, str]:
    """Import ``transfusion._C`` once. Returns (module or None, reason when None)."""
    if os.environ.get("TRANSFUSION_DISABLE_EXTENSION") == "1":
        return None, "disabled by TRANSFUSION_DISABLE_EXTENSION=1"
    try:
        module = importlib.import_module("transfusion._C")
    except ImportError as exc:  # not built, or built against another torch
        reason = f"transfusion._C could not be imported ({exc}); {_BUILD_HINT}"
        warnings.warn(
            f"{reason}. Falling back to the ops' pure-torch versions (correct, slower).",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, reason
    built_for = module.build_info()["torch_version"]
    if built_for.split("+")[0] != torch.__version__.split("+")[0]:
        warnings.warn(
            f"transfusion._C was built against torch {built_for} but torch {torch.__version__} is "
            f"running; rebuild it ({_BUILD_HINT}).",
            RuntimeWarning,
            stacklevel=3,
        )
    return module, ""


def available() -> bool:
    """True when the compiled extension is loaded (its ops are in ``torch.ops.transfusion``)."""
    return _load()[0] is not None


@lru_cache(maxsize=1)
def kernel_device_types() -> frozenset[str]:
    """Device types that have compiled kernels: {"cpu"} or {"cpu", "cuda"}; empty without _C."""
    module, _ = _load()
    if module is None:
        return frozenset()
    return frozenset({"cpu", "cuda"} if module.build_info()["cuda"] else {"cpu"})


def has_kernel(device: torch.device | str) -> bool:
    """True when kernels were built for ``device``'s type. Which op runs a kernel for which
    tensor (op, device, dtype) is ``transfusion.ops.dispatch.has_kernel``'s answer, the ops' one."""
    return torch.device(device).type in kernel_device_types()


def build_info() -> dict[str, Any]:
    """What was built: extension loaded or why not, CUDA kernels and their archs, CPU capability."""
    module, reason = _load()
    if module is None:
        return {"extension": False, "reason": reason, "cuda": False, "cuda_archs": "",
                "cuda_compile_checked": False, "cpu_capability": "none (pure-torch fallbacks)"}
    info = dict(module.build_info())
    info["extension"] = True
    info["cpu_output_cache_limit_mib"] = module.cpu_output_cache_info()["limit_bytes"] >> 20
    if info["cuda"]:
        info["reason"] = ""
    elif info["cuda_compile_checked"]:
        info["reason"] = ("torch has no CUDA: the CUDA sources were compile-checked with nvcc, "
                          "not built")
    else:
        info["reason"] = "torch has no CUDA or nvcc was not found at build time"
    return info


def cpu_output_cache_info() -> dict[str, int]:
    """``{"cached_bytes", "limit_bytes"}`` of the CPU ops' output allocator: freed outputs of at
    least 2 MiB are kept for reuse, up to TRANSFUSION_CPU_OUTPUT_CACHE_MIB (default 256) MiB.
    All zeros without the extension."""
    module, _ = _load()
    if module is None:
        return {"cached_bytes": 0, "limit_bytes": 0}
    return dict(module.cpu_output_cache_info())


def empty_cpu_output_cache() -> None:
    """Frees the blocks the CPU ops' output allocator holds for reuse (a no-op without it)."""
    module, _ = _load()
    if module is not None:
        module.empty_cpu_output_cache()
