"""Where a result was computed: versions, threads, the extension's build and the devices.

Recorded in every run's config.json and printed by ``transfusion info``; a base module (it
imports nothing of the package above ``_extension``), so training records it without reaching up
to the command line.
"""
from __future__ import annotations

import platform


def environment_info() -> dict:
    """Versions, threads, extension build and devices: what a result file records as 'where'."""
    import numpy
    import torch

    import transfusion
    from transfusion import _extension

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                            "capability": f"{p.major}.{p.minor}"})
    return {
        "transfusion": transfusion.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "extension": _extension.build_info(),
        "cuda_devices": devices,
    }
