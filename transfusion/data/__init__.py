"""Medical-imaging datasets from local files (EyePACS, APTOS, MedMNIST, CheXpert, ImageFolder) and
synthetic stand-ins written in the same formats (``transfusion.data.synthetic``).

``load_dataset(name, root, split, ...)`` is the one entry point; every dataset it returns has
``.task`` (or ``.classes`` for imagefolder), ``.describe()`` and items ``(image, target, mask)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from transfusion.data.catalogue import TASKS as TASK_TABLE
from transfusion.data.catalogue import LoadRequest, augment_name, find_format, format_names
from transfusion.data.tasks import CHEXPERT, CHEXPERT_COMPETITION, REFERABLE_GRADE, RETINA, TASKS, Task, referable

if TYPE_CHECKING:  # torch and numpy load on first use, keeping `transfusion --help` fast
    from transfusion.data.base import ImageDataset

log = logging.getLogger(__name__)


def load_dataset(name: str, root: str | Path, split: str, *, image_size: int, augment: bool,
                 seed: int = 0, label_policy: str | dict = "ignore", in_channels: int = 3,
                 frontal_only: bool = True, split_file: str | None = None,
                 cache_dir: str | None = None, skip_missing: bool = False,
                 limit: int | None = None) -> "ImageDataset":
    """Open one split of a dataset in its published on-disk format.

    name: a format of the catalogue (``transfusion.data.catalogue.FORMATS``: eyepacs | aptos |
    medmnist | chexpert | imagefolder, or an alias), which names its loader, task, image fit and
    augmentation; every loader takes the same LoadRequest. root: the dataset folder
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
    fmt = find_format(name)
    root = Path(root)
    got = fmt.load(LoadRequest(root=root, split=split, seed=seed, split_file=split_file,
                               label_policy=label_policy, frontal_only=frontal_only))
    task = got.task or TASK_TABLE[fmt.task].spec
    return ImageDataset(dataset=fmt.name, table=got.table, task=task, classes=got.classes, fit=fmt.fit,
                        augment=getattr(T, augment_name(fmt, task)) if augment else None,
                        label_policy=got.label_policy, extra=got.extra, image_size=image_size,
                        in_channels=in_channels, cache_dir=cache_dir, skip_missing=skip_missing,
                        limit=limit, split=split, root=root)


def __getattr__(name: str):
    if name == "DATASET_NAMES":  # read from the catalogue each time: a format may be registered
        return format_names()
    if name == "ImageDataset":
        from transfusion.data.base import ImageDataset

        return ImageDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHEXPERT", "CHEXPERT_COMPETITION", "DATASET_NAMES", "ImageDataset",
           "REFERABLE_GRADE", "RETINA", "TASKS", "Task", "load_dataset", "referable"]
