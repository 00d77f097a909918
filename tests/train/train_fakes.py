"""Tiny stand-ins for the models and data packages (contract-shaped), for fast loop tests."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from transfusion.train.loop import Components


@dataclass(frozen=True)
class FakeTask:
    name: str
    kind: str
    num_outputs: int
    label_names: tuple


RETINA = FakeTask("retina", "grade", 5, ("0", "1", "2", "3", "4"))
CHEX = FakeTask("chexpert", "multilabel", 5, ("Atelectasis", "Cardiomegaly", "Consolidation",
                                              "Edema", "Pleural Effusion"))
NATURAL = FakeTask("natural", "multiclass", 4, ("a", "b", "c", "d"))


class FakeDataset(Dataset):
    """Images whose channel means carry the label (learnable in a few steps); optional flips drawn
    from the global torch RNG, as transfusion.data's augmentation does."""

    def __init__(self, task, split: str, n: int, image_size: int, augment: bool, seed: int,
                 in_channels: int = 3):
        g = torch.Generator().manual_seed(seed * 7 + {"train": 0, "val": 1, "test": 2}[split])
        self.task, self.augment, self.n = task, augment, n
        s = image_size
        if task.kind == "multiclass":  # ImageFolder-like: .classes, no .task
            self.classes = ("a", "b", "c", "d")
            self.targets = torch.randint(0, 4, (n,), generator=g)
            shift = self.targets.float()[:, None, None, None] * 0.4
            self.masks = torch.ones(n)
        elif task.kind == "grade":
            self.targets = torch.randint(0, 5, (n,), generator=g)
            shift = self.targets.float()[:, None, None, None] * 0.4
            self.masks = torch.ones(n)
        else:
            self.targets = (torch.rand(n, 5, generator=g) < 0.5).float()
            shift = self.targets[:, :in_channels, None, None] * 0.8
            self.masks = (torch.rand(n, 5, generator=g) < 0.8).float()
        self.images = torch.randn(n, in_channels, s, s, generator=g) + shift

        if task.kind == "multiclass":
            self.task = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = self.images[i]
        if self.augment and float(torch.rand(())) < 0.5:
            x = x.flip(-1)
        return x, self.targets[i], self.masks[i]

    def describe(self):
        return {"dataset": "fake", "n": self.n}


def load_dataset(name, root, split, *, image_size, augment, seed=0, label_policy="ignore",
                 in_channels=3, limit=None, **_):
    task = {"chexpert": CHEX, "imagefolder": NATURAL}.get(name, RETINA)
    n = {"train": 48, "val": 40, "test": 40}[split]
    if limit is not None:
        n = min(n, limit)
    return FakeDataset(task, split, n, image_size, augment, seed, in_channels)


class TinyNet(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.fc = nn.Linear(6, num_classes)
        self.num_classes, self.in_channels = num_classes, in_channels

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def build_model(name, num_classes, in_channels=3, **_):
    return TinyNet(num_classes, in_channels)


def initialize(model, method, *, model_name, checkpoint=None, upto=None, seed=0):
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    return {"method": method, "model": model_name, "seed": seed}


def components() -> Components:
    return Components(build_model=build_model, initialize=initialize, load_dataset=load_dataset)


def tiny_spec(default_overrides: dict, **kw):
    """The loop tests' run: the tiny model on the fake retina data, 12 steps of 8 images at 8 px,
    seed 3, recipe overrides ``default_overrides``; ``kw`` changes any RunSpec field (overrides
    too)."""
    from transfusion.train.spec import RunSpec

    base = dict(model="tiny", dataset="eyepacs", data_root="fake", recipe="retina", steps=12,
                image_size=8, batch_size=8, overrides=default_overrides, seed=3)
    base.update(kw)
    return RunSpec(**base)
