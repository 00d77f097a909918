"""The one place that reads torch files, and the owner of the model-checkpoint format.

Every file goes through :func:`load_torch_file`, which calls ``torch.load(weights_only=True)``:
the unpickler then rebuilds only tensors and plain containers (dict, list, tuple, str, numbers,
bools, None), so a file with a pickled code payload is refused before anything in it runs. What
the project writes itself (model checkpoints, optimizer/scheduler/RNG state, metadata) is stored
in that form (see ``transfusion.train.checkpoint`` for the RNG states).

The model checkpoint (step0.pt, step<N>.pt, model_final.pt, pretrained sources) is written by
:func:`write_model_file` and read by :func:`read_model_file`, whoever builds or rebuilds the
model (``transfusion.initializers.checkpoint`` for registry models, the training loop for any
module): ``{"format": "transfusion-model", "version": 1, "model_name", "num_classes",
"in_channels", "state_dict" (CPU tensors), "meta" (plain values; Inception-v3's
``transform_input`` is kept here)}``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from transfusion.errors import CheckpointError
from transfusion.utils import atomic_torch_save

MODEL_FORMAT = "transfusion-model"
MODEL_VERSION = 1


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


def is_model_file(obj) -> bool:
    """Whether ``obj`` (what :func:`load_torch_file` returned) is this project's model checkpoint."""
    return isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT


def write_model_file(path: str | os.PathLike, state_dict: dict, *, model_name: str,
                     num_classes: int, in_channels: int, meta: dict | None = None) -> None:
    """Write a model checkpoint (atomically; tensors moved to the CPU). ``meta`` must hold only
    plain values (str, numbers, bools, None, lists, dicts): files are read back with weights_only."""
    atomic_torch_save(path, {
        "format": MODEL_FORMAT, "version": MODEL_VERSION, "model_name": model_name,
        "num_classes": int(num_classes), "in_channels": int(in_channels),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "meta": dict(meta or {})})


def read_model_file(path: str | os.PathLike, fix: str = "", other_kind_fix: str = "") -> dict:
    """The content of a model checkpoint written by :func:`write_model_file`, or a one-line
    ``CheckpointError``: an unreadable file (``fix`` says what to do) or a torch file of another
    kind (``other_kind_fix``)."""
    obj = load_torch_file(path, "model checkpoint", fix)
    if not is_model_file(obj):
        other_kind_fix = f"; {other_kind_fix}" if other_kind_fix else ""
        raise CheckpointError(f"{str(Path(path))!r} is not a transfusion model checkpoint (it has "
                              f"no 'format': '{MODEL_FORMAT}' entry){other_kind_fix}")
    return obj
