"""ResNet50 (torchvision's layout and state_dict keys, stride on the 3x3 conv: "v1.5"), its
slim variant (block3-block4 with half the channels) and a narrow variant (a quarter of the
channels everywhere, for CPU demos).

Written here so that no torchvision is needed at run time; a torchvision or timm ImageNet
``resnet50`` state_dict loads as it is (25,557,032 parameters with the 1000-way head).
Stages: conv1 (= conv1 + bn1, activation after the ReLU, before the max-pool), block1..block4
(= layer1..layer4). The top two stages are block3 and block4.
"""
from __future__ import annotations

import torch
from torch import nn

from transfusion.models.base import StagedModel, he_init_


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(StagedModel):
    """Bottleneck ResNet with torchvision's keys. ``stem``: conv1 channels; ``planes``: the
    bottleneck width of layer1..layer4 (outputs are 4x that). ``zero_init_residual``: start
    every block's last BN weight (``bn3.weight``) at 0, so each block begins as the identity
    (torchvision's option of that name; Goyal et al. 2017)."""

    head_prefix = "fc"
    first_conv_key = "conv1.weight"

    def __init__(self, num_classes: int, in_channels: int = 3, stem: int = 64,
                 planes: tuple[int, int, int, int] = (64, 128, 256, 512),
                 blocks: tuple[int, int, int, int] = (3, 4, 6, 3),
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.zero_init_residual = zero_init_residual
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        for i, (width, n) in enumerate(zip(planes, blocks), start=1):
            stride = 1 if i == 1 else 2
            downsample = None
            if stride != 1 or inplanes != width * Bottleneck.expansion:
                downsample = nn.Sequential(conv1x1(inplanes, width * Bottleneck.expansion, stride),
                                           nn.BatchNorm2d(width * Bottleneck.expansion))
            layers = [Bottleneck(inplanes, width, stride, downsample)]
            inplanes = width * Bottleneck.expansion
            layers += [Bottleneck(inplanes, width) for _ in range(1, n)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

        self._stage_modules = {"conv1": "relu", "block1": "layer1", "block2": "layer2",
                               "block3": "layer3", "block4": "layer4"}
        self._stage_prefixes = {"conv1": ("conv1", "bn1"), "block1": ("layer1",),
                                "block2": ("layer2",), "block3": ("layer3",),
                                "block4": ("layer4",)}
        self.top_stages = ("block3", "block4")
        self.init_weights()

    def init_weights(self) -> None:
        """torchvision's init: He normal (fan_out) convs, BN 1/0, default Linear head; with
        ``zero_init_residual`` each bottleneck's ``bn3.weight`` is 0 instead of 1."""
        he_init_(self)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int, in_channels: int = 3) -> ResNet:
    return ResNet(num_classes, in_channels)


def resnet50_slim(num_classes: int, in_channels: int = 3) -> ResNet:
    """conv1..block2 exactly as ResNet50 (so they take its pretrained weights), block3 and
    block4 with half the channels (outputs 512 and 1024 instead of 1024 and 2048)."""
    return ResNet(num_classes, in_channels, planes=(64, 128, 128, 256))


def resnet50_narrow_slim(num_classes: int, in_channels: int = 3) -> ResNet:
    """The slim hybrid of ``resnet50_narrow``: conv1..block2 exactly as the narrow model (so they
    take its pretrained weights), block3 and block4 with half its channels (the CPU demo's slim)."""
    return ResNet(num_classes, in_channels, stem=16, planes=(16, 32, 32, 64),
                  zero_init_residual=True)


#: each slim model and the model whose pretrained conv1..block2 it takes
SLIM_SOURCE = {"resnet50_slim": "resnet50", "resnet50_narrow_slim": "resnet50_narrow"}


def resnet50_narrow(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet50's layout with a quarter of the channels everywhere (CPU demos), with
    ``zero_init_residual``: without it this thin 16-block network barely trains in the few
    hundred Adam steps (batch 8) of a CPU demo — measured on the synthetic sets at 32 px,
    200 steps: 10-class natural-image accuracy 0.33 (0.89 with it; CBR-Tiny 0.89) and
    referable-DR AUC ~0.5 (training loss flat at the class prior). The full-width models keep
    torchvision's default (1.0) so that they match the paper's standard init."""
    return ResNet(num_classes, in_channels, stem=16, planes=(16, 32, 64, 128),
                  zero_init_residual=True)
