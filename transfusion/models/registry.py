"""One registry for every model of the study: ``build_model(name, num_classes, in_channels)``."""
from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from transfusion.errors import ConfigError
from transfusion.models.cbr import CBR_SPECS, CBRNet
from transfusion.models.inception import inception_v3
from transfusion.models.resnet import resnet50, resnet50_narrow, resnet50_narrow_slim, resnet50_slim

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": lambda nc, ic, fused: resnet50(nc, ic),
    "inception_v3": lambda nc, ic, fused: inception_v3(nc, ic),
    "resnet50_slim": lambda nc, ic, fused: resnet50_slim(nc, ic),
    "resnet50_narrow": lambda nc, ic, fused: resnet50_narrow(nc, ic),
    "resnet50_narrow_slim": lambda nc, ic, fused: resnet50_narrow_slim(nc, ic),
    **{name: (lambda nc, ic, fused, _s=spec: CBRNet(_s, nc, ic, fused=fused))
       for name, spec in CBR_SPECS.items()},
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES = {_squash(n): n for n in MODEL_NAMES}


def canonical_model_name(name: str) -> str:
    """The registry name for ``name``; dashes, underscores, spaces and case do not matter
    ("CBR-Small" -> "cbr_small", "Inception-v3" -> "inception_v3")."""
    key = _squash(str(name))
    if key not in _ALIASES:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _ALIASES[key]


def model_skeleton(name: str, num_classes: int = 1000, in_channels: int = 3, *,
                   cbr_fused: bool = True) -> nn.Module:
    """The model on the meta device: its structure, keys and shapes, no memory, no init."""
    canonical = canonical_model_name(name)
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if int(in_channels) not in (1, 3):
        raise ConfigError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
    with torch.device("meta"):
        model = _BUILDERS[canonical](int(num_classes), int(in_channels), bool(cbr_fused))
    model.model_name = canonical
    return model


def build_model(name: str, num_classes: int, in_channels: int = 3, *,
                cbr_fused: bool = True) -> nn.Module:
    """A freshly initialised model on the CPU (the architecture's standard init, drawn from
    torch's global RNG; ``initialize(model, "random", seed=...)`` redraws it from a seed).

    ``in_channels=1`` for grayscale X-rays. ``cbr_fused`` picks the fused conv-BN-ReLU op
    (default) or the eager modules for the CBR models; the state_dict is the same either way.
    """
    # Built on the meta device and initialised once: skips every module's default init, which
    # the standard init overwrites anyway (Inception-v3 builds ~3x faster).
    model = model_skeleton(name, num_classes, in_channels, cbr_fused=cbr_fused)
    model = model.to_empty(device="cpu")
    model.init_weights()
    return model
