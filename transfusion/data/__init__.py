"""Medical-imaging datasets from local files (EyePACS, APTOS, MedMNIST, CheXpert, ImageFolder) and
synthetic stand-ins written in the same formats (``transfusion.data.synthetic``).

``load_dataset(name, root, split, ...)`` is the one entry point; every dataset it returns has
``.task`` (or ``.classes`` for imagefolder), ``.describe()`` and items ``(image, target, mask)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from transfusion.data.tasks import CHEXPERT, CHEXPERT_COMPETITION, REFERABLE_GRADE, RETINA, TASKS, Task, referable
from transfusion.errors import ConfigError

if TYPE_CHECKING:  # torch and numpy load on first use, keeping `transfusion --help` fast
    from transfusion.data.base import ImageDataset

log = logging.getLogger(__name__)

DATASET_NAMES = ("eyepacs", "aptos", "medmnist", "chexpert", "imagefolder")


def load_dataset(name: str, root: str | Path, split: str, *, image_size: int, augment: bool,
                 seed: int = 0, label_policy: str | dict = "ignore", in_channels: int = 3,
                 frontal_only: bool = True, split_file: str | None = None,
                 cache_dir: str | None = None, skip_missing: bool = False,
                 limit: int | None = None) -> "ImageDataset":
    """Open one split of a dataset in its published on-disk format.

    name: eyepacs | aptos | medmnist | chexpert | imagefolder. root: the dataset folder
    (medmnist: the .npz file; chexpert: CheXpert-v1.0-small/ or its parent). split: train | val |
    test (how each dataset makes them: see its module). seed: the patient-hash split seed.
    label_policy: CheXpert uncertainty policy (see transfusion.data.chexpert). in_channels: 1 or 3;
    images are converted to it. limit: keep the first ``limit`` images of the split.
    cache_dir: keep decoded, resized uint8 images there (one .npy per split and size).
    skip_missing: leave missing (and, with a cache, unreadable) images out instead of failing;
    the count is in ``describe()``.
    """
    from transfusion.data import splits as S
    from transfusion.data import transforms as T
    from transfusion.data.base import ImageDataset

    S.check_split(split)
    key = name.lower().replace("-", "").replace("_", "")
    root = Path(root)
    common = dict(image_size=image_size, in_channels=in_channels, cache_dir=cache_dir,
                  skip_missing=skip_missing, limit=limit, split=split, root=root)
    if key in ("eyepacs", "aptos"):
        from transfusion.data.retina import load_aptos, load_eyepacs

        loader = load_eyepacs if key == "eyepacs" else load_aptos
        table, extra = loader(root, split, seed, split_file)
        return ImageDataset(dataset=key, table=table, task=RETINA, fit="pad",
                            augment=T.RETINA_AUGMENT if augment else None, extra=extra, **common)
    if key in ("chexpert", "chexpertsmall", "chexpertv10small", "chexpertv10"):
        from transfusion.data.chexpert import load_chexpert, parse_label_policy

        table, extra = load_chexpert(root, split, seed, split_file, label_policy, frontal_only)
        return ImageDataset(dataset="chexpert", table=table, task=CHEXPERT, fit="stretch",
                            augment=T.CHEXPERT_AUGMENT if augment else None,
                            label_policy=parse_label_policy(label_policy).name, extra=extra, **common)
    if key in ("medmnist", "retinamnist", "chestmnist"):
        from transfusion.data.medmnist import load_medmnist

        table, task, extra = load_medmnist(root, split, split_file)
        aug = (T.RETINA_AUGMENT if task is RETINA else T.CHEXPERT_AUGMENT) if augment else None
        return ImageDataset(dataset="medmnist", table=table, task=task, fit="stretch", augment=aug,
                            extra=extra, **common)
    if key == "imagefolder":
        from transfusion.data.imagefolder import load_imagefolder

        table, classes, extra = load_imagefolder(root, split, seed, split_file)
        return ImageDataset(dataset="imagefolder", table=table, task=None, classes=classes,
                            fit="stretch", augment=T.NATURAL_AUGMENT if augment else None,
                            extra=extra, **common)
    raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASET_NAMES)}")


def __getattr__(name: str):
    if name == "ImageDataset":
        from transfusion.data.base import ImageDataset

        return ImageDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHEXPERT", "CHEXPERT_COMPETITION", "DATASET_NAMES", "ImageDataset",
           "REFERABLE_GRADE", "RETINA", "TASKS", "Task", "load_dataset", "referable"]
