"""MedMNIST ``.npz`` files (retinamnist, chestmnist): ``{train,val,test}_{images,labels}``.

Images are uint8, gray as (N, H, W), RGB as (N, H, W, 3). Splits are MedMNIST's official ones
(no patient ids; a split file is refused). Task from the labels: retinamnist's (N, 1) grades 0-4
-> retina; chestmnist's (N, 14) NIH ChestX-ray14 labels -> the CheXpert task through the 5
labels both share (Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion = Pleural Effusion);
chestmnist has no uncertain or blank labels, so every policy gives the same targets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from transfusion.data.base import ItemTable
from transfusion.data.tasks import CHEXPERT, RETINA, Task
from transfusion.errors import ConfigError, DataError

CHESTMNIST_LABELS = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                     "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                     "pleural", "hernia")
#: columns of chestmnist for Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
CHESTMNIST_TO_CHEXPERT = (0, 1, 8, 9, 2)


def load_medmnist(path: Path, split: str, split_file: str | None) -> tuple[ItemTable, Task, dict]:
    path = Path(path)
    if split_file:
        raise ConfigError("MedMNIST files carry fixed official splits; a split file cannot apply")
    if not path.is_file():
        raise DataError(f"MedMNIST file {path} does not exist: pass the .npz file itself "
                        "(e.g. retinamnist.npz) as root")
    try:
        npz = np.load(path)
    except Exception as e:  # noqa: BLE001 - numpy raises several kinds for a bad archive
        raise DataError(f"cannot read {path} as a MedMNIST .npz: {e}") from e
    ki, kl = f"{split}_images", f"{split}_labels"
    with npz:
        missing = [k for k in (ki, kl) if k not in npz.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {missing}; a MedMNIST file has "
                            "train_/val_/test_ images and labels (found {npz.files})")
        images, labels = npz[ki], npz[kl]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DataError(f"{path}: {ki} must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
    labels = np.asarray(labels).reshape(len(labels), -1)
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels in split {split}")
    if labels.shape[1] == 1:
        if not np.isin(labels, np.arange(5)).all():
            raise DataError(f"{path}: {kl} has values {np.unique(labels)[:10]} outside the grades 0-4")
        task, targets, masks = RETINA, labels[:, 0].astype(np.int64), np.ones(len(labels), np.float32)
    elif labels.shape[1] == len(CHESTMNIST_LABELS):
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: {kl} must be 0/1 multi-label (chestmnist)")
        task = CHEXPERT
        targets = labels[:, CHESTMNIST_TO_CHEXPERT].astype(np.float32)
        masks = np.ones_like(targets)
    else:
        raise DataError(f"{path}: {kl} has {labels.shape[1]} columns; supported are retinamnist (1) "
                        f"and chestmnist ({len(CHESTMNIST_LABELS)})")
    ids = [f"{split}_{i}" for i in range(len(images))]
    table = ItemTable(image_ids=ids, patient_ids=ids, targets=targets, masks=masks, arrays=images,
                      sources=[f"{path.name}[{ki}][{i}]" for i in range(len(images))])
    return table, task, {"split_source": "MedMNIST official split"}
