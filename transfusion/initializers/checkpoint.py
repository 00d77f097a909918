"""Reading and writing model checkpoints, offline.

Reads (always with ``torch.load(weights_only=True)``, on the CPU):
- torchvision ``.pth`` files (a plain state_dict, e.g. ``resnet50-0676ba61.pth``,
  ``inception_v3_google-0cc3c7bd.pth``);
- timm files (a state_dict, or a dict holding it under ``"state_dict"`` / ``"model"``, keys
  possibly prefixed ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (torch.compile));
- this project's model checkpoints, written by ``save_model_checkpoint`` in the format that
  ``transfusion.checkpoints`` owns (``write_model_file`` / ``read_model_file``).

``identify_architecture`` names the registry model a state_dict belongs to (from its keys and
shapes), so that a wrong file gets an error that says what it is.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from transfusion.checkpoints import is_model_file, load_torch_file, read_model_file, write_model_file
from transfusion.errors import CheckpointError, ConfigError
from transfusion.models import MODEL_NAMES, build_model, canonical_model_name, model_skeleton

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.")

DISPLAY_NAMES = {
    "resnet50": "ResNet50", "inception_v3": "Inception-v3", "resnet50_slim": "ResNet50-slim",
    "resnet50_narrow": "ResNet50-narrow", "resnet50_narrow_slim": "ResNet50-narrow-slim",
    "cbr_larget": "CBR-LargeT", "cbr_largew": "CBR-LargeW",
    "cbr_small": "CBR-Small", "cbr_tiny": "CBR-Tiny",
}


@dataclass
class Checkpoint:
    """A state_dict read from a file, with where it came from."""

    path: str
    sha256: str
    state_dict: dict[str, torch.Tensor]
    model_name: str | None = None          # known for this project's own files
    notes: list[str] = field(default_factory=list)
    info: dict | None = None               # own files: num_classes, in_channels, meta

    def describe(self) -> dict:
        return {"path": self.path, "sha256_16": self.sha256[:16], "model_name": self.model_name,
                "tensors": len(self.state_dict)}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _strip_prefixes(state_dict: dict) -> tuple[dict, list[str]]:
    notes = []
    for prefix in _PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
            notes.append(f"stripped the '{prefix}' prefix from every key")
    return state_dict, notes


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint file into a ``Checkpoint`` (state_dict on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist; pass the path of an "
                              "ImageNet .pth file (torchvision/timm) or of a transfusion model "
                              "checkpoint")
    obj = load_torch_file(path, "checkpoint", _TRUSTED_FIX)
    return checkpoint_from_object(path, obj)


_TRUSTED_FIX = ("if you trust the file (e.g. a training checkpoint with its arguments), extract its "
                "weights once in a Python session of your own (torch.load it there, then torch.save "
                "only its 'state_dict' entry) and pass that file")


def checkpoint_from_object(path: str | os.PathLike, obj) -> Checkpoint:
    """A ``Checkpoint`` from what ``load_torch_file`` read from ``path``."""
    model_name = info = None
    notes: list[str] = []
    if is_model_file(obj):
        model_name = obj.get("model_name")
        info = {k: obj.get(k) for k in ("model_name", "num_classes", "in_channels", "meta")}
        obj = obj.get("state_dict")
    elif isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                notes.append(f"state_dict read from the file's {key!r} entry")
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        what = type(obj).__name__
        keys = list(obj)[:8] if isinstance(obj, dict) else []
        raise CheckpointError(
            f"{str(path)!r} is a readable torch file but not a model state_dict (found a {what}"
            f"{' with keys ' + str(keys) if keys else ''}); expected a dict of tensors, "
            f"possibly under one of {list(_WRAPPER_KEYS)}")
    bad = [k for k, v in obj.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds NaN or infinite values in {len(bad)} tensor(s) (first: "
            f"{bad[0]}): the weights are broken (a diverged run or a bad download); use another "
            "checkpoint")
    state_dict, prefix_notes = _strip_prefixes(dict(obj))
    return Checkpoint(str(path), file_sha256(path), state_dict, model_name, notes + prefix_notes,
                      info)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict of a torchvision / timm / transfusion checkpoint file."""
    return read_checkpoint(path).state_dict


def save_model_checkpoint(path: str | os.PathLike, model: nn.Module, model_name: str,
                          meta: dict | None = None) -> None:
    """Write registry model ``model`` in this project's format (``transfusion.checkpoints``,
    atomically), its classes and input channels read from its head and first conv; Inception-v3's
    ``transform_input`` goes into ``meta``."""
    sd = model.state_dict()
    meta = dict(meta or {})
    if getattr(model, "transform_input", False):
        meta.setdefault("transform_input", True)
    write_model_file(path, sd, model_name=canonical_model_name(model_name),
                     num_classes=sd[model.head_prefix + ".weight"].shape[0],
                     in_channels=sd[model.first_conv_key].shape[1], meta=meta)


def load_model_checkpoint(path: str | os.PathLike, *, cbr_fused: bool = True):
    """Rebuild the model saved by ``save_model_checkpoint``: returns ``(model, info)`` where
    ``info`` holds model_name, num_classes, in_channels and meta."""
    path = Path(path)
    obj = read_model_file(path, "give a model_final.pt or checkpoints/step0.pt of a run folder",
                          "build the model with build_model() and use initialize(..., 'transfer', "
                          "checkpoint=...) instead")
    ckpt = checkpoint_from_object(path, obj)
    info = dict(ckpt.info, meta=ckpt.info.get("meta") or {})
    try:
        model = build_model(info["model_name"], info["num_classes"], info["in_channels"],
                            cbr_fused=cbr_fused)
        model.load_state_dict(ckpt.state_dict)
    except (CheckpointError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - a wrong header or wrong shapes: the file is bad
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{str(path)!r} claims to be a {info['model_name']!r} checkpoint with "
            f"{info['num_classes']} classes and {info['in_channels']} input channels, but its "
            f"weights do not fit that model ({first}); the file was edited or damaged: use "
            "another checkpoint") from None
    if info["meta"].get("transform_input"):
        model.transform_input = True
    return model, info


# ----------------------------------------------------------------------------- identification

def _comparable(key: str, shape: tuple, model: nn.Module) -> tuple | None:
    """(key, shape) with what may differ between two files of one architecture removed: heads,
    BN counters, conv1's input channels. None for keys that are not compared."""
    if model.is_head_key(key) or key.endswith("num_batches_tracked"):
        return None
    if key == model.first_conv_key:
        shape = (shape[0],) + tuple(shape[2:])
    return key, tuple(shape)


@lru_cache(maxsize=None)
def _signature(model_name: str) -> tuple[frozenset, nn.Module]:
    probe = model_skeleton(model_name, 1000)
    sig = (_comparable(k, tuple(v.shape), probe) for k, v in probe.state_dict().items())
    return frozenset(s for s in sig if s is not None), probe


def identify_architecture(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The registry name of the model this state_dict belongs to (heads, BN counters and the
    first conv's input channels ignored), or None."""
    for name in MODEL_NAMES:
        expected, probe = _signature(name)
        sig = {_comparable(k, tuple(v.shape), probe) for k, v in state_dict.items()}
        sig.discard(None)
        # Inception files from timm have no auxiliary classifier: accept a set missing only it.
        if sig == expected or (sig <= expected and all(
                k.startswith("AuxLogits.") for k, _ in expected - sig)):
            return name
    return None


def describe_state_dict(state_dict: dict[str, torch.Tensor], model_name: str | None = None) -> str:
    """One sentence on what a state_dict looks like, for error messages."""
    name = model_name or identify_architecture(state_dict)
    if name:
        return f"this is a {DISPLAY_NAMES.get(name, name)} checkpoint ('{name}')"
    n_params = sum(v.numel() for v in state_dict.values())
    first = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(state_dict.items())[:4])
    return (f"it matches none of the registry's models ({len(state_dict)} tensors, "
            f"{n_params:,} values; first keys: {first})")
