"""What every model of the registry exposes: its stages in order, by the paper's names.

Analysis (activations of a stage) and initialisation (which state_dict keys belong to a stage)
use only this interface, never model-specific string matching:

- ``stage_names``: the stages, input to output (ResNet: conv1, block1..block4; Inception:
  Conv2d_1a_3x3 .. Mixed_7c; CBR: cbr1..cbrN).
- ``stage(name)``: a module whose forward output is that stage's activation (for forward hooks).
- ``stage_keys(name)``: the state_dict keys of that stage's parameters and buffers.
- ``top_stages``: the paper's "top two" stages (representation experiment).
- ``head_prefix`` / ``head_prefixes``: state_dict key prefix(es) of the classification head(s),
  which an initialisation always draws fresh.
- ``first_conv_key``: state_dict key of the first convolution's weight.
"""
from __future__ import annotations

from torch import nn


class StagedModel(nn.Module):
    """Base class: subclasses fill ``_stage_modules`` (stage -> module path for the hook) and
    ``_stage_prefixes`` (stage -> state_dict key prefixes) in their constructor."""

    head_prefix: str = "fc"
    first_conv_key: str = "conv1.weight"

    def __init__(self) -> None:
        super().__init__()
        self._stage_modules: dict[str, str] = {}
        self._stage_prefixes: dict[str, tuple[str, ...]] = {}
        self.top_stages: tuple[str, str] = ("", "")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self._stage_modules)

    @property
    def head_prefixes(self) -> tuple[str, ...]:
        """Every classification head (Inception-v3 has two: ``fc`` and ``AuxLogits.fc``)."""
        return (self.head_prefix,)

    def _check_stage(self, name: str) -> None:
        if name not in self._stage_modules:
            raise KeyError(f"{type(self).__name__} has no stage {name!r}; "
                           f"its stages are {', '.join(self.stage_names)}")

    def stage(self, name: str) -> nn.Module:
        """The module whose forward output is the activation of stage ``name``."""
        self._check_stage(name)
        return self.get_submodule(self._stage_modules[name])

    def stage_keys(self, name: str) -> list[str]:
        """The state_dict keys (parameters and buffers) that belong to stage ``name``."""
        self._check_stage(name)
        prefixes = tuple(p + "." for p in self._stage_prefixes[name])
        return [k for k in self.state_dict() if k.startswith(prefixes)]

    def is_head_key(self, key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in self.head_prefixes)

    def stage_of_key(self, key: str) -> str | None:
        """The stage a state_dict key belongs to; None for the head and for keys outside any
        stage (e.g. Inception-v3's auxiliary classifier)."""
        for name, prefixes in self._stage_prefixes.items():
            if any(key.startswith(p + ".") for p in prefixes):
                return name
        return None

    def init_weights(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


def he_init_(model: nn.Module) -> None:
    """torchvision's standard init, the paper's "random": He normal (fan_out, ReLU) for convs,
    BN weight 1 and bias 0 with fresh running statistics, PyTorch's default for Linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
