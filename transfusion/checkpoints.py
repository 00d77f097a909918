"""The one place that reads torch files (model checkpoints, training checkpoints).

Every file goes through :func:`load_torch_file`, which calls ``torch.load(weights_only=True)``:
the unpickler then rebuilds only tensors and plain containers (dict, list, tuple, str, numbers,
bools, None), so a file with a pickled code payload is refused before anything in it runs. What
the project writes itself (model checkpoints, optimizer/scheduler/RNG state, metadata) is stored
in that form (see ``transfusion.train.checkpoint`` for the RNG states).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from transfusion.errors import CheckpointError


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", fix: str = "") -> object:
    """The object stored in ``path`` (tensors on the CPU), or a one-line ``CheckpointError``.

    ``what`` names the file in messages ("checkpoint", "training checkpoint"); ``fix`` is what the
    user can do when the file cannot be read (appended to the message)."""
    path = Path(path)
    fix = f"; {fix}" if fix else ""
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist or is not a file{fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types: zip, pickle, EOF, runtime
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise CheckpointError(
                f"{what} {str(path)!r} holds pickled Python objects besides tensors and plain "
                "values; transfusion refuses to load them because unpickling can run code from "
                "the file (nothing in it was run). Use a file that holds only tensors (a "
                f"state_dict), e.g. one written by transfusion or torchvision{fix}") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise CheckpointError(
            f"cannot read {what} {str(path)!r} as a torch file ({type(exc).__name__}: {first}); "
            f"it is truncated, corrupt or not a checkpoint{fix}") from None
