"""Dataset files a user hands the tool that used to corrupt a result silently (16-bit images
clipped, a patient in train and test, val-only classes dropped) or crash with a traceback (pickled
or empty MedMNIST arrays, decompression bombs): each is now read right or refused with one
DataError line naming the file (and line) and what to do. Files are tiny but in the published
formats (EyePACS trainLabels.csv / retinopathy_solution.csv, APTOS train.csv, CheXpert train.csv,
MedMNIST .npz, ImageFolder)."""
from __future__ import annotations

import csv
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from hostile_helpers import assert_one_error_line  # noqa: E402

from transfusion.data import load_dataset  # noqa: E402
from transfusion.data.transforms import decode_file  # noqa: E402
from transfusion.errors import DataError  # noqa: E402

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
                   "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,"
                   "Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices")


def _image(path: Path, size=(24, 20), seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _csv(path: Path, header: str, rows, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header.split(","))
        w.writerows(rows)


def _eyepacs(root: Path, n_patients=6, rows_extra=(), bom=False) -> Path:
    rows = []
    for p in range(n_patients):
        for eye in ("left", "right"):
            name = f"{10 + p}_{eye}"
            rows.append([name, p % 5])
            _image(root / "train" / f"{name}.jpeg", seed=p)
    _csv(root / "trainLabels.csv", "image,level", [*rows, *rows_extra], bom=bom)
    return root


def _refused(match: str, fn, *args, **kw) -> str:
    """``fn`` raises DataError matching ``match``, on one line; returns the message."""
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _load(name, root, split="train", **kw):
    return load_dataset(name, root, split, image_size=16, augment=False, **kw)


# ----- 1. bit depth -------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_image_decodes_like_its_8bit_version(tmp_path, suffix, channels):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / f"a8{suffix}")
    Image.fromarray(a8.astype(np.uint16) * 257).save(tmp_path / f"a16{suffix}")
    assert Image.open(tmp_path / f"a16{suffix}").mode.startswith("I;16")
    x8 = decode_file(tmp_path / f"a8{suffix}", 32, channels, "stretch").astype(int)
    x16 = decode_file(tmp_path / f"a16{suffix}", 32, channels, "stretch").astype(int)
    assert np.abs(x8 - x16).max() <= 1
    assert (x16 == 255).mean() < 0.05  # was 0.99: every value above 255 clipped


def test_16bit_big_endian_tiff_and_16bit_pgm(tmp_path):
    a8 = np.arange(600, dtype=np.uint16).reshape(20, 30) % 256
    a16 = a8 * 257
    Image.frombytes("I;16B", (30, 20), a16.astype(">u2").tobytes()).save(tmp_path / "be.tif")
    Image.fromarray(a16.astype(np.uint16)).save(tmp_path / "x.ppm")  # opens as mode "I"
    Image.fromarray(a8.astype(np.uint8)).save(tmp_path / "ref.png")
    ref = decode_file(tmp_path / "ref.png", 16, 1, "stretch").astype(int)
    for f in ("be.tif", "x.ppm"):
        assert np.abs(decode_file(tmp_path / f, 16, 1, "stretch").astype(int) - ref).max() <= 1, f


def test_float_and_32bit_tiff_are_refused_not_clipped(tmp_path):
    a = (np.arange(600).reshape(20, 30) * 100).astype(np.float32)
    Image.fromarray(a).save(tmp_path / "f.tif")
    Image.fromarray(a.astype(np.int32), "I").save(tmp_path / "i.tif")
    root = tmp_path / "nat"
    for k, f in enumerate(("f.tif", "i.tif")):
        (root / "train" / f"c{k}").mkdir(parents=True)
        (root / "val" / f"c{k}").mkdir(parents=True)
        (tmp_path / f).rename(root / "train" / f"c{k}" / f)
        _image(root / "val" / f"c{k}" / "v.png")
    ds = _load("imagefolder", root)
    for i in range(2):
        msg = _refused(r"\.tif.*(32-bit|floating-point)", ds.__getitem__, i)
        assert "8 or 16 bit" in msg


# ----- 2./3. EyePACS label files ------------------------------------------------------------------
def _solution(root: Path, names, start=0):
    rows = []
    for k, n in enumerate(names):
        _image(root / "test" / f"{n}.jpeg", seed=start + k)
        rows.append([n, k % 5, "Private"])
    _csv(root / "retinopathy_solution.csv", "image,level,Usage", rows)


def test_patient_in_train_and_test_file_is_refused(tmp_path):
    root = _eyepacs(tmp_path / "e")
    _solution(root, ["90_left", "90_right", "12_right"])  # patient 12 is also in trainLabels
    for split in ("train", "test"):
        _refused(r"patient '12'.*trainLabels.csv, line 6.*retinopathy_solution.csv, line 4",
                 _load, "eyepacs", root, split)


def test_patient_in_train_and_test_file_cli_is_one_line(tmp_path, cli):
    root = _eyepacs(tmp_path / "e")
    _solution(root, ["12_left"])
    code, out, err = cli("data", "describe", "eyepacs", root)
    assert_one_error_line(code, err, "trainLabels.csv, line", "retinopathy_solution.csv, line 2")


def test_conflicting_duplicate_rows_name_both_lines(tmp_path):
    root = _eyepacs(tmp_path / "e", rows_extra=[["11_left", 4]])  # 11_left is grade 1 on line 4
    _refused(r"trainLabels.csv.*'11_left'.*lines? 4 .*14", _load, "eyepacs", root)


def test_identical_duplicate_rows_warn_and_are_merged(tmp_path, caplog):
    root = _eyepacs(tmp_path / "e", rows_extra=[["11_left", 1], ["11_left", 1]])
    ids = tmp_path / "ids.csv"
    _csv(ids, "id,split", [[str(10 + p), "train"] for p in range(6)])
    with caplog.at_level(logging.WARNING):
        ds = _load("eyepacs", root, split_file=str(ids))
    assert len(ds) == 12 and ds.table.image_ids.count("11_left") == 1
    assert "11_left" in caplog.text and "duplicate" in caplog.text and "14" in caplog.text


@pytest.mark.parametrize("level", ["nan", "inf", "-inf", "2.5", "", "two", "1e3"])
def test_eyepacs_level_not_an_integer_names_line(tmp_path, level):
    root = _eyepacs(tmp_path / "e", rows_extra=[["99_left", level]])
    _image(root / "train" / "99_left.jpeg")
    _refused(r"trainLabels.csv, line 14: level must be an integer in 0..4", _load, "eyepacs", root)


# ----- 7. paths out of the dataset folder, BOM ----------------------------------------------------
@pytest.mark.parametrize("bad", ["../secret", "/etc/passwd", "..\\x", "train/../../x", "C:\\x"])
def test_eyepacs_and_aptos_refuse_paths(tmp_path, bad):
    root = _eyepacs(tmp_path / "e", rows_extra=[[bad, 0]])
    _refused(r"trainLabels.csv, line 14: image .* (is a path|outside)", _load, "eyepacs", root)
    ap = tmp_path / "aptos"
    _image(ap / "train_images" / "abc.png")
    _csv(ap / "train.csv", "id_code,diagnosis", [["abc", 1], [bad, 2]])
    _refused(r"train.csv, line 3: id_code .* (is a path|outside)", _load, "aptos", ap)


def _chexpert_row(path, frontal="Frontal"):
    return [path, "Female", "60", frontal, "AP", "", "", "1.0", "", "", "0.0", "", "", "-1.0", "",
            "", "", "", ""]


@pytest.mark.parametrize("bad", ["CheXpert-v1.0-small/../../etc/patient1/x.jpg",
                                 "/etc/patient00001/view1_frontal.jpg",
                                 "CheXpert-v1.0-small/train/patient1/../../../x.jpg"])
def test_chexpert_refuses_paths_outside_root(tmp_path, bad):
    base = tmp_path / "CheXpert-v1.0-small"
    good = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    _csv(base / "train.csv", CHEXPERT_HEADER, [_chexpert_row(good), _chexpert_row(bad)])
    _refused(r"train.csv, line 3: Path .* outside the dataset folder", _load, "chexpert", tmp_path)


def test_utf8_bom_in_label_headers_is_read(tmp_path):
    root = _eyepacs(tmp_path / "e", bom=True)
    assert len(_load("eyepacs", root)) > 0
    base = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for p in range(1, 9):
        rel = f"train/patient{p:05d}/study1/view1_frontal.jpg"
        _image(base / rel, seed=p)
        rows.append(_chexpert_row(f"CheXpert-v1.0-small/{rel}"))
    _csv(base / "train.csv", CHEXPERT_HEADER, rows, bom=True)
    assert len(_load("chexpert", tmp_path)) > 0
    split = tmp_path / "split.csv"
    _csv(split, "id,split", [["10", "train"], ["11", "train"]], bom=True)
    assert len(_load("eyepacs", root, split_file=str(split))) == 4


def test_label_file_not_utf8_names_line(tmp_path):
    root = _eyepacs(tmp_path / "e")
    with open(root / "trainLabels.csv", "ab") as f:
        f.write(b"caf\xe9_left,1\n")
    _refused(r"trainLabels.csv, line 14: not UTF-8 text", _load, "eyepacs", root)
    base = tmp_path / "CheXpert-v1.0-small"
    base.mkdir()
    (base / "train.csv").write_bytes((CHEXPERT_HEADER + "\n").encode() + b"\xff\xfe,1\n")
    _refused(r"train.csv, line 2: not UTF-8 text", _load, "chexpert", tmp_path)


# ----- 4. MedMNIST ----------------------------------------------------------------------------------
def _npz(path, images, labels, **kw):
    arrays = {f"{s}_images": images for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": labels for s in ("train", "val", "test")})
    arrays.update(kw)
    np.savez(path, **arrays)


def test_medmnist_zero_size_images(tmp_path):
    p = tmp_path / "retinamnist.npz"
    _npz(p, np.zeros((4, 0, 0, 3), np.uint8), np.zeros((4, 1), np.int64))
    _refused(r"retinamnist.npz: train_images .*zero size", _load, "medmnist", p)


def test_medmnist_empty_split(tmp_path):
    p = tmp_path / "retinamnist.npz"
    _npz(p, np.zeros((0, 28, 28, 3), np.uint8), np.zeros((0, 1), np.int64))
    _refused(r"retinamnist.npz.*'train' split .*no images", _load, "medmnist", p)


def test_medmnist_object_arrays_are_not_unpickled(tmp_path):
    p = tmp_path / "retinamnist.npz"
    obj = np.empty(4, dtype=object)
    obj[:] = [np.zeros((28, 28, 3), np.uint8)] * 4
    _npz(p, obj, np.zeros((4, 1), np.int64))
    msg = _refused(r"retinamnist.npz: train_images holds pickled Python objects", _load, "medmnist", p)
    assert "allow_pickle" not in msg


@pytest.mark.parametrize("content", [b"train_images,train_labels\n1,2\n",
                                     pickle.dumps({"train_images": [1, 2]}),
                                     b"PK\x03\x04 truncated zip"])
def test_medmnist_not_an_npz(tmp_path, content):
    p = tmp_path / "retinamnist.npz"
    p.write_bytes(content)
    msg = _refused(r"retinamnist.npz.* not a NumPy \.npz archive", _load, "medmnist", p)
    assert "allow_pickle" not in msg


def test_medmnist_single_npy_is_refused(tmp_path):
    p = tmp_path / "retinamnist.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros((4, 28, 28, 3), np.uint8))
    _refused(r"retinamnist.npz.* not a NumPy \.npz archive", _load, "medmnist", p)


def test_medmnist_missing_array_lists_what_is_there(tmp_path):
    p = tmp_path / "retinamnist.npz"
    np.savez(p, train_images=np.zeros((2, 28, 28, 3), np.uint8), foo=np.zeros(2))
    msg = _refused(r"missing array", _load, "medmnist", p)
    assert "{npz.files}" not in msg and "'foo'" in msg and "'train_images'" in msg


# ----- 5. ImageFolder -------------------------------------------------------------------------------
@pytest.mark.parametrize("extra_split", ["val", "test"])
def test_imagefolder_class_missing_from_train(tmp_path, extra_split):
    root = tmp_path / "nat"
    for split in ("train", "val", "test"):
        for c in ("ant", "bee"):
            _image(root / split / c / "0.png")
    _image(root / extra_split / "cow" / "0.png")
    _image(root / extra_split / "dog" / "0.png")
    for split in ("train", "val", "test"):
        _refused(rf"{extra_split}/ has class\(es\) cow, dog that train/ lacks", _load, "imagefolder",
                 root, split)


# ----- 6. decompression bombs -----------------------------------------------------------------------
@pytest.mark.parametrize("limit", [100, 400])  # 24x20 = 480 px: over 2x (PIL error), over 1x (warning)
def test_decompression_bomb_is_refused_and_skippable(tmp_path, monkeypatch, limit):
    root = _eyepacs(tmp_path / "e")
    ids = tmp_path / "ids.csv"
    _csv(ids, "id,split", [["10", "test"], ["11", "test"]])
    _image(root / "train" / "11_left.jpeg", size=(24, 20))
    for n in ("10_left", "10_right", "11_right"):
        _image(root / "train" / f"{n}.jpeg", size=(12, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    ds = _load("eyepacs", root, "test", split_file=str(ids))
    i = ds.table.image_ids.index("11_left")
    msg = _refused(r"11_left.jpeg \(trainLabels.csv, line 4\).*decompression bomb", ds.__getitem__, i)
    assert "skip_missing=True" in msg
    assert "--skip-missing" not in msg or "transfusion data" in msg  # no made-up train/run flag
    ds = _load("eyepacs", root, "test", split_file=str(ids), skip_missing=True,
               cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and ds.describe()["n_unreadable_skipped"] == 1


def test_missing_image_advice_names_a_real_option(tmp_path):
    root = _eyepacs(tmp_path / "e")
    (root / "train" / "10_left.jpeg").unlink()
    ids = tmp_path / "ids.csv"
    _csv(ids, "id,split", [["10", "test"]])
    msg = _refused(r"missing", _load, "eyepacs", root, "test", split_file=str(ids))
    assert "skip_missing=True" in msg
    assert "--skip-missing" not in msg or "transfusion data" in msg
