import csv
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from transfusion.data import load_dataset, synthetic
from transfusion.data.chexpert import CHEXPERT_COLUMNS, read_chexpert_csv


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_fundus_is_an_eyepacs_folder(tmp_path):
    root = synthetic.make_fundus(tmp_path / "f", 40, 32, seed=1, workers=1)
    with open(root / "trainLabels.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "level"]
    with open(root / "retinopathy_solution.csv") as f:
        sol = list(csv.reader(f))
    assert sol[0] == ["image", "level", "Usage"] and {r[2] for r in sol[1:]} <= {"Public", "Private"}
    names = [r[0] for r in rows[1:]] + [r[0] for r in sol[1:]]
    assert len(names) == 40 and all(n.endswith(("_left", "_right")) for n in names)
    assert (root / "train" / f"{rows[1][0]}.jpeg").is_file()
    img = Image.open(root / "train" / f"{rows[1][0]}.jpeg")
    assert img.format == "JPEG" and img.size == (40, 32) and img.mode == "RGB"
    arr = np.asarray(img)
    assert arr[0, 0].max() < 20 and arr[16, 20].mean() > 40  # dark outside, bright inside the field
    ds = load_dataset("eyepacs", root, "test", image_size=24, augment=False)
    assert ds.describe()["split_source"] == "retinopathy_solution.csv"


def test_fundus_grade_prior():
    grades = np.array([g for _, _, g in synthetic.fundus_labels(20000, seed=0)])
    freq = np.bincount(grades, minlength=5) / len(grades)
    assert np.allclose(freq, synthetic.GRADE_PRIOR, atol=0.015)


def test_chexpert_is_a_chexpert_small_folder(tmp_path):
    root = synthetic.make_chexpert(tmp_path / "c", 120, 32, seed=2, workers=1)
    base = root / "CheXpert-v1.0-small"
    header = (base / "train.csv").read_text().splitlines()[0]
    assert header == ",".join(CHEXPERT_COLUMNS)
    t = read_chexpert_csv(base / "train.csv")
    assert all(p.startswith("CheXpert-v1.0-small/train/patient") for p in t.paths)
    assert (t.raw == -1).any() and np.isnan(t.raw).any() and (t.raw == 0).any() and (t.raw == 1).any()
    assert 0 < (~t.frontal).sum() < len(t) * 0.4  # some lateral views
    v = read_chexpert_csv(base / "valid.csv", binary_only=True)
    assert len(v) == 12 and not set(v.patient_ids) & set(t.patient_ids)
    im = Image.open(base / t.paths[0].split("/", 1)[1])
    assert im.mode == "L" and im.size == (32, 36)
    for r in (root, base):
        ds = load_dataset("chexpert", r, "test", image_size=16, augment=False)
        assert len(ds) == v.frontal.sum()


def test_natural_imagefolder(tmp_path):
    root = synthetic.make_natural(tmp_path / "n", 60, 24, n_classes=12, seed=0, workers=1)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(classes) == 12 and all(len(list((root / c).glob("*.png"))) == 5 for c in classes)
    ds = load_dataset("imagefolder", root, "train", image_size=24, augment=True)
    assert len(ds.classes) == 12


def test_deterministic_whatever_the_workers(tmp_path):
    a = synthetic.make_fundus(tmp_path / "a", 40, 24, seed=7, workers=1)
    b = synthetic.make_fundus(tmp_path / "b", 40, 24, seed=7, workers=2)
    c = synthetic.make_fundus(tmp_path / "c", 40, 24, seed=8, workers=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    x = synthetic.make_chexpert(tmp_path / "x", 40, 24, seed=7, workers=1)
    y = synthetic.make_chexpert(tmp_path / "y", 40, 24, seed=7, workers=2)
    assert _digest(x) == _digest(y)


def test_ensure_synthetic_reuses(tmp_path):
    r1 = synthetic.ensure_synthetic("natural", tmp_path, 20, 16, seed=0, n_classes=4, workers=1)
    stamp = (r1 / "synthetic.json").stat().st_mtime_ns
    r2 = synthetic.ensure_synthetic("natural", tmp_path, 20, 16, seed=0, n_classes=4, workers=1)
    assert r1 == r2 and (r2 / "synthetic.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
