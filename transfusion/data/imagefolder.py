"""ImageFolder layout for any "natural image" source: ``root/<class>/<image>.<ext>``.

If ``root`` has ``train/`` (and ``val/``, optionally ``test/``) subfolders, those are the splits;
otherwise each image is assigned by a hash of its relative path (80/10/10). Classes are the sorted
folder names; the target is the class index.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transfusion.data import splits as S
from transfusion.data.base import ItemTable
from transfusion.data.catalogue import Loaded, LoadRequest
from transfusion.errors import DataError

EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def _classes(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith(".")))


def _scan(folder: Path, classes: tuple[str, ...]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for k, c in enumerate(classes):
        if not (folder / c).is_dir():
            continue
        names = sorted(e.name for e in os.scandir(folder / c)
                       if e.is_file() and os.path.splitext(e.name)[1].lower() in EXTS)
        paths += [str(folder / c / n) for n in names]
        labels += [k] * len(names)
    return paths, labels


def _check_split_classes(root: Path, classes: tuple[str, ...]) -> None:
    """Class indices come from train/; a class folder only in val/ or test/ would be dropped."""
    for split in ("val", "test"):
        if (root / split).is_dir():
            extra = sorted(set(_classes(root / split)) - set(classes))
            if extra:
                raise DataError(f"{root / split}/ has class(es) {', '.join(extra)} that train/ lacks; "
                                "the model has no output for them: add them to train/ or move them "
                                "out of the dataset folder")


def load_imagefolder(req: LoadRequest) -> Loaded:
    """The catalogue's loader of ImageFolder trees (one subfolder per class)."""
    table, classes, extra = _imagefolder(Path(req.root), req.split, req.seed, req.split_file)
    return Loaded(table, classes=classes, extra=extra)


def _imagefolder(root: Path, split: str, seed: int, split_file: str | None
                 ) -> tuple[ItemTable, tuple[str, ...], dict]:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: give a folder with one subfolder per class")
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    folder = root / split if presplit else root
    if presplit and not folder.is_dir():
        raise DataError(f"{root} has train/ and val/ but no {split}/ folder")
    classes = _classes(root / "train" if presplit else root)
    if presplit:
        _check_split_classes(root, classes)
    paths, labels = _scan(folder, classes)
    if not classes or not paths:
        raise DataError(f"{folder} has no class subfolders with images ({', '.join(sorted(EXTS))})")
    rel = [os.path.relpath(p, folder) for p in paths]
    table = ItemTable(image_ids=rel, patient_ids=rel, targets=np.asarray(labels, np.int64),
                      masks=np.ones(len(paths), np.float32), paths=paths, sources=rel)
    if presplit and not split_file:
        return table, classes, {"split_source": f"{split}/ folder"}
    if split_file:
        assigned = S.splits_from_file(S.read_split_file(split_file), rel, rel, str(split_file))
        source = f"split file {split_file}"
    else:
        assigned = S.assign_splits(rel, seed, S.DEFAULT_FRACTIONS)
        source = f"image hash seed {seed}, 80/10/10"
    return table.select(np.asarray([a == split for a in assigned], bool)), classes, {"split_source": source}
