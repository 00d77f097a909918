"""Retina datasets: EyePACS (Kaggle diabetic retinopathy) and APTOS 2019 blindness detection.

EyePACS: ``trainLabels.csv`` (image,level) with ``train/<image>.jpeg``; optionally the released
test labels ``retinopathy_solution.csv`` (image,level,Usage) with ``test/<image>.jpeg``.
Patient id: the image name before ``_left``/``_right``. APTOS: ``train.csv`` (id_code,diagnosis)
with ``train_images/<id_code>.png``; each image is its own patient (APTOS gives no patient ids).

Splits: when the EyePACS test file exists, test = that file (all Usage values, counts recorded)
and train/val = 90/10 of trainLabels by patient hash; otherwise 80/10/10 of the one label file.
Targets: grade 0-4 (int64); referable DR = grade >= 2 is derived by the metrics.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from transfusion.data import splits as S
from transfusion.data.base import ItemTable
from transfusion.data.catalogue import Loaded, LoadRequest
from transfusion.data.csvfile import parse_int_label, read_rows
from transfusion.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_EYE = re.compile(r"^(.+)_(left|right)$")
IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")


def eye_patient(image: str) -> str:
    m = _EYE.match(image)
    return m.group(1) if m else image


def _index_dir(folder: Path) -> dict[str, str]:
    """stem -> file name for the images in ``folder`` (one directory listing, not one stat each)."""
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if ext.lower() in IMAGE_EXTS:
                prev = out.get(stem)
                # prefer the dataset's own extension order
                if prev is None or IMAGE_EXTS.index(ext.lower()) < IMAGE_EXTS.index(os.path.splitext(prev)[1].lower()):
                    out[stem] = e.name
    return out


def read_grade_csv(csv_path: Path, image_dir: Path, id_col: str, label_col: str, default_ext: str,
                   what: str, patient_of=eye_patient, extra_cols=()) -> tuple[ItemTable, dict]:
    header, rows = read_rows(csv_path, (id_col, label_col, *extra_cols), what)
    ci, cl = header.index(id_col), header.index(label_col)
    cx = [header.index(c) for c in extra_cols]
    files = _index_dir(image_dir)
    ids, grades, paths, sources, extras = [], [], [], [], [[] for _ in extra_cols]
    first: dict[str, tuple[int, tuple]] = {}  # image -> (line, its values), to catch repeated rows
    repeats: list[str] = []
    for lineno, row in rows:
        image = row[ci].strip()
        if not image:
            raise DataError(f"{csv_path}, line {lineno}: empty {id_col}")
        if "/" in image or "\\" in image or image in (".", ".."):
            raise DataError(f"{csv_path}, line {lineno}: {id_col} {image!r} is a path, not an "
                            "image name; label files may only name images inside the dataset "
                            "folder (no '/', '\\' or '..'): fix or remove the line")
        grade = parse_int_label(row[cl], range(5), csv_path, lineno, label_col)
        values = (grade, *(row[c].strip() for c in cx))
        if image in first:
            line0, values0 = first[image]
            if values0 != values:
                shown = lambda v: ", ".join(  # noqa: E731
                    f"{c} {x}" for c, x in zip((label_col, *extra_cols), v))
                raise DataError(f"{csv_path}: {id_col} {image!r} is on lines {line0} ({shown(values0)}) "
                                f"and {lineno} ({shown(values)}) with different labels; keep the "
                                "right row and delete the other")
            repeats.append(f"{image!r} (lines {line0} and {lineno})")
            continue
        first[image] = (lineno, values)
        grades.append(grade)
        ids.append(image)
        paths.append(str(image_dir / files.get(image, image + default_ext)))
        sources.append(f"{csv_path.name}, line {lineno}")
        for k, c in enumerate(cx):
            extras[k].append(row[c].strip())
    if repeats:
        log.warning("%s: %d duplicate rows with the same labels, each image kept once (first: %s); "
                    "delete the repeated lines to silence this", csv_path, len(repeats),
                    ", ".join(repeats[:3]))
    n = len(ids)
    table = ItemTable(image_ids=ids, patient_ids=[patient_of(i) for i in ids],
                      targets=np.asarray(grades, dtype=np.int64), masks=np.ones(n, np.float32),
                      paths=paths, sources=sources)
    return table, {c: extras[k] for k, c in enumerate(extra_cols)}


def _pick(table: ItemTable, assigned: np.ndarray, split: str) -> ItemTable:
    return table.select(np.asarray([a == split for a in assigned], dtype=bool))


def load_eyepacs(req: LoadRequest) -> Loaded:
    """The catalogue's loader of EyePACS (Kaggle diabetic-retinopathy) folders."""
    table, extra = _eyepacs(Path(req.root), req.split, req.seed, req.split_file)
    return Loaded(table, extra=extra)


def _eyepacs(root: Path, split: str, seed: int, split_file: str | None) -> tuple[ItemTable, dict]:
    what = "EyePACS (trainLabels.csv: image,level; train/<image>.jpeg)"
    train, _ = read_grade_csv(root / "trainLabels.csv", root / "train", "image", "level", ".jpeg", what)
    sol_path = root / "retinopathy_solution.csv"
    test = usage = None
    if sol_path.is_file():
        test, ex = read_grade_csv(sol_path, root / "test", "image", "level", ".jpeg",
                                  "EyePACS test labels (retinopathy_solution.csv: image,level,Usage)",
                                  extra_cols=("Usage",))
        usage = ex["Usage"]
    if split_file:
        pool = train if test is None else _concat(train, test)
        assigned = S.splits_from_file(S.read_split_file(split_file), pool.patient_ids, pool.image_ids,
                                      str(split_file))
        return _pick(pool, assigned, split), {"split_source": f"split file {split_file}"}
    if test is not None:
        _check_patients_apart(train, test, root)
        if split == "test":
            return test, {"split_source": "retinopathy_solution.csv", "usage": dict(Counter(usage))}
        assigned = S.assign_splits(train.patient_ids, seed, S.TRAIN_VAL_FRACTIONS)
        return _pick(train, assigned, split), {"split_source": f"patient hash seed {seed}, 90/10 train/val"}
    assigned = S.assign_splits(train.patient_ids, seed, S.DEFAULT_FRACTIONS)
    return _pick(train, assigned, split), {"split_source": f"patient hash seed {seed}, 80/10/10"}


def _check_patients_apart(train: ItemTable, test: ItemTable, root: Path) -> None:
    """The test file becomes the test split as is: a patient also in trainLabels.csv would be in
    train (or val) and test at once, and the test metrics would be inflated."""
    where: dict[str, str] = {}
    for pid, src in zip(train.patient_ids, train.sources):
        where.setdefault(pid, src)  # the patient's first line
    for pid, src in zip(test.patient_ids, test.sources):
        if pid in where:
            raise DataError(f"{root}: EyePACS patient {pid!r} is in {where[pid]} and in {src}; the test file "
                            "must hold other patients than trainLabels.csv; remove the patient from "
                            "one file, or give a split_file that puts each patient in one split")


def load_aptos(req: LoadRequest) -> Loaded:
    """The catalogue's loader of APTOS 2019 folders."""
    table, extra = _aptos(Path(req.root), req.split, req.seed, req.split_file)
    return Loaded(table, extra=extra)


def _aptos(root: Path, split: str, seed: int, split_file: str | None) -> tuple[ItemTable, dict]:
    table, _ = read_grade_csv(root / "train.csv", root / "train_images", "id_code", "diagnosis", ".png",
                              "APTOS 2019 (train.csv: id_code,diagnosis; train_images/<id_code>.png)",
                              patient_of=lambda s: s)
    if split_file:
        assigned = S.splits_from_file(S.read_split_file(split_file), table.patient_ids, table.image_ids,
                                      str(split_file))
        return _pick(table, assigned, split), {"split_source": f"split file {split_file}"}
    assigned = S.assign_splits(table.patient_ids, seed, S.DEFAULT_FRACTIONS)
    return _pick(table, assigned, split), {"split_source": f"image hash seed {seed}, 80/10/10 "
                                                           "(APTOS has no patient ids)"}


def _concat(a: ItemTable, b: ItemTable) -> ItemTable:
    if set(a.image_ids) & set(b.image_ids):
        raise ConfigError("EyePACS trainLabels.csv and retinopathy_solution.csv share image names; "
                          "they cannot be pooled for a split file")
    return ItemTable(image_ids=a.image_ids + b.image_ids, patient_ids=a.patient_ids + b.patient_ids,
                     targets=np.concatenate([a.targets, b.targets]),
                     masks=np.concatenate([a.masks, b.masks]), paths=a.paths + b.paths,
                     sources=a.sources + b.sources)
