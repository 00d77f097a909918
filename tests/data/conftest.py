"""Builders of tiny dataset folders in the exact published formats, shared by tests/data."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
                   "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,"
                   "Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices")


def write_image(path: Path, size=(40, 30), mode="RGB", value=None, seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    fmt = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG"}[path.suffix]
    Image.fromarray(arr, mode).save(path, format=fmt)


def write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header.split(",") if isinstance(header, str) else header)
        w.writerows(rows)


@pytest.fixture
def eyepacs_dir(tmp_path) -> Path:
    """20 patients x 2 eyes, all grades, .jpeg images; no test file."""
    root = tmp_path / "eyepacs"
    rows = []
    for p in range(20):
        for eye in ("left", "right"):
            name = f"{100 + p}_{eye}"
            rows.append([name, (p + (eye == "right")) % 5])
            write_image(root / "train" / f"{name}.jpeg", seed=p)
    write_csv(root / "trainLabels.csv", "image,level", rows)
    return root


def chexpert_row(path, frontal=True, labels=("", "", "", "", ""), ap="AP"):
    """A 19-column row; labels in competition order (Atelectasis, Cardiomegaly, Consolidation,
    Edema, Pleural Effusion) placed in their published columns."""
    at, card, cons, ed, eff = labels
    return [path, "Female", "60", "Frontal" if frontal else "Lateral", ap if frontal else "",
            "", "", card, "", "", ed, cons, "", at, "", eff, "", "", ""]


@pytest.fixture
def chexpert_dir(tmp_path) -> Path:
    """A CheXpert-v1.0-small folder with the awkward cases: lateral views, blanks, -1.0."""
    base = tmp_path / "CheXpert-v1.0-small"
    rows = []
    labels = [("1.0", "", "-1.0", "0.0", ""), ("-1.0", "1.0", "", "", "0.0"),
              ("", "0.0", "1.0", "-1.0", "1.0"), ("0.0", "-1.0", "0.0", "1.0", "-1.0")]
    for p in range(1, 13):
        for study in (1, 2):
            lab = labels[(p + study) % 4]
            rel = f"train/patient{p:05d}/study{study}/view1_frontal.jpg"
            rows.append(chexpert_row(f"CheXpert-v1.0-small/{rel}", True, lab))
            write_image(base / rel, (32, 36), "L", seed=p)
            if p % 3 == 0:
                rel = f"train/patient{p:05d}/study{study}/view2_lateral.jpg"
                rows.append(chexpert_row(f"CheXpert-v1.0-small/{rel}", False, lab))
                write_image(base / rel, (32, 36), "L", seed=p + 100)
    write_csv(base / "train.csv", CHEXPERT_HEADER, rows)
    vrows = []
    for p in range(20, 24):
        rel = f"valid/patient{p:05d}/study1/view1_frontal.jpg"
        vrows.append(chexpert_row(f"CheXpert-v1.0-small/{rel}", True,
                                  tuple("1.0" if (p + k) % 2 else "0.0" for k in range(5))))
        write_image(base / rel, (32, 36), "L", seed=p)
    write_csv(base / "valid.csv", CHEXPERT_HEADER, vrows)
    return base


@pytest.fixture
def write_image_fn():
    """The image writer (tests cannot import conftest under --import-mode=importlib)."""
    return write_image


@pytest.fixture
def write_csv_fn():
    return write_csv


@pytest.fixture
def chexpert_row_fn():
    return chexpert_row


@pytest.fixture
def chexpert_header():
    return CHEXPERT_HEADER
