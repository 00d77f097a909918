"""MedMNIST ``.npz`` files (retinamnist, chestmnist): ``{train,val,test}_{images,labels}``.

Images are uint8, gray as (N, H, W), RGB as (N, H, W, 3). Splits are MedMNIST's official ones
(no patient ids; a split file is refused). Task from the labels: retinamnist's (N, 1) grades 0-4
-> retina; chestmnist's (N, 14) NIH ChestX-ray14 labels -> the CheXpert task through the 5
labels both share (Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion = Pleural Effusion);
chestmnist has no uncertain or blank labels, so every policy gives the same targets.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from transfusion.data.base import ItemTable
from transfusion.data.catalogue import Loaded, LoadRequest
from transfusion.data.tasks import CHEXPERT, RETINA, Task
from transfusion.errors import ConfigError, DataError

CHESTMNIST_LABELS = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                     "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                     "pleural", "hernia")
#: columns of chestmnist for Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
CHESTMNIST_TO_CHEXPERT = (0, 1, 8, 9, 2)


def _read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``{split}_images`` and ``{split}_labels`` of a .npz archive, never unpickling anything."""
    ki, kl = f"{split}_images", f"{split}_labels"
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a NumPy .npz archive (a zip of .npy arrays); pass the "
                        "MedMNIST .npz file itself (e.g. retinamnist.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (ki, kl) if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; a MedMNIST file has train_/val_/"
                                f"test_ images and labels (found {npz.files})")
            out = []
            for k in (ki, kl):
                try:
                    out.append(npz[k])
                except ValueError as e:
                    if "allow_pickle" not in str(e):
                        raise
                    raise DataError(f"{path}: {k} holds pickled Python objects, which are not read "
                                    "(they can run code); a MedMNIST file holds plain uint8 arrays: "
                                    "use the original file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        why = (str(e).splitlines() or [""])[0]
        why = f"{type(e).__name__}: {why}" if why and "pickle" not in why else type(e).__name__
        raise DataError(f"{path} is not a NumPy .npz archive that can be read ({why}); use the "
                        "original MedMNIST file") from None
    return out[0], out[1]


def load_medmnist(req: LoadRequest) -> Loaded:
    """The catalogue's loader of MedMNIST .npz files (retinamnist, chestmnist); the file says the
    task."""
    table, task, extra = _medmnist(Path(req.root), req.split, req.split_file)
    return Loaded(table, task=task, extra=extra)


def _medmnist(path: Path, split: str, split_file: str | None) -> tuple[ItemTable, Task, dict]:
    if split_file:
        raise ConfigError("MedMNIST files carry fixed official splits; a split file cannot apply")
    if not path.is_file():
        raise DataError(f"MedMNIST file {path} does not exist: pass the .npz file itself "
                        "(e.g. retinamnist.npz) as root")
    images, labels = _read_split(path, split)
    ki, kl = f"{split}_images", f"{split}_labels"
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DataError(f"{path}: {ki} must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise DataError(f"{path}: the {split!r} split has no images ({ki} has shape {images.shape}); "
                        "use a MedMNIST file whose splits all hold images")
    if 0 in images.shape[1:3]:
        raise DataError(f"{path}: {ki} images are of zero size (shape {images.shape}); the file is "
                        "broken: download or rebuild it")
    if labels.ndim == 0 or len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {labels.shape[0] if labels.ndim else 0} "
                        f"labels in split {split}")
    labels = labels.reshape(len(labels), -1)
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
