"""The paper's small CBR models: stacks of conv (stride 1, no bias, "same" padding) -> BatchNorm
-> ReLU, with 3x3 stride-2 max-pools (no padding) between them, then global average pooling
and one linear layer.

The four models are data (``CBR_SPECS``), not four classes. Each CBR block is
``transfusion.ops.CBR2d`` (fused conv-BN-ReLU op; ``fused=False`` runs eager
Conv2d/BatchNorm2d/ReLU with the same state_dict keys) and each pool a
``transfusion.ops.MaxPool2dSavingIndices`` (nn.MaxPool2d's results, but it does not keep the
block's output alive for backward; ``fused=False`` uses nn.MaxPool2d). State_dict keys: ``cbr<i>.conv.weight``,
``cbr<i>.bn.*``, ``fc.weight``, ``fc.bias``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transfusion.models.base import StagedModel, he_init_
from transfusion.ops import CBR2d, MaxPool2dSavingIndices


@dataclass(frozen=True)
class CBRSpec:
    """kernel size and, per layer, (output channels, max-pool after it?)."""

    kernel: int
    layers: tuple[tuple[int, bool], ...]


# docs/paper.md, "Models": CBR-Tiny is 5x5 32-64-128-256 (1.08M conv weights), see the note there.
CBR_SPECS: dict[str, CBRSpec] = {
    "cbr_larget": CBRSpec(7, ((32, True), (64, True), (128, True), (256, True), (512, False))),
    "cbr_largew": CBRSpec(7, ((64, True), (128, True), (256, True), (512, True))),
    "cbr_small": CBRSpec(7, ((32, True), (64, True), (128, True), (256, True))),
    "cbr_tiny": CBRSpec(5, ((32, True), (64, True), (128, True), (256, True))),
}


class CBRNet(StagedModel):
    """A CBR model built from a ``CBRSpec``. Stages cbr1..cbrN (a stage's activation is its
    block's ReLU output, before the pool); the top two stages are the last two blocks."""

    head_prefix = "fc"
    first_conv_key = "cbr1.conv.weight"

    def __init__(self, spec: CBRSpec, num_classes: int, in_channels: int = 3,
                 fused: bool = True) -> None:
        super().__init__()
        self.spec = spec
        channels = in_channels
        self._order: list[str] = []
        for i, (out_channels, pool) in enumerate(spec.layers, start=1):
            name = f"cbr{i}"
            self.add_module(name, CBR2d(channels, out_channels, spec.kernel, stride=1,
                                        padding="same", fused=fused))
            self._stage_modules[name] = name
            self._stage_prefixes[name] = (name,)
            self._order.append(name)
            if pool:
                pool = MaxPool2dSavingIndices if fused else nn.MaxPool2d
                self.add_module(f"pool{i}", pool(kernel_size=3, stride=2, padding=0))
                self._order.append(f"pool{i}")
            channels = out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        names = self.stage_names
        self.top_stages = (names[-2], names[-1])
        self.init_weights()

    def init_weights(self) -> None:
        """He (fan_out, ReLU) for convs, BN weight 1 bias 0, PyTorch's default for the head."""
        he_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
