import numpy as np
import pytest

from transfusion.data import CHEXPERT, RETINA, load_dataset
from transfusion.errors import ConfigError, DataError


def test_aptos(tmp_path, write_csv_fn, write_image_fn):
    root = tmp_path / "aptos"
    rows = []
    for i in range(30):
        rows.append([f"{i:04x}abcd", i % 5])
        write_image_fn(root / "train_images" / f"{i:04x}abcd.png", (50, 40), seed=i)
    write_csv_fn(root / "train.csv", "id_code,diagnosis", rows)
    n = 0
    for split in ("train", "val", "test"):
        try:
            ds = load_dataset("aptos", root, split, image_size=16, augment=True)
        except DataError as e:
            assert "empty" in str(e)
            continue
        assert ds.task is RETINA
        img, g, m = ds[0]
        assert img.shape == (3, 16, 16) and g.dtype.is_floating_point is False
        n += len(ds)
    assert n == 30


def _npz(path, images, labels):
    np.savez(path, **{f"{s}_images": images for s in ("train", "val", "test")},
             **{f"{s}_labels": labels for s in ("train", "val", "test")})


def test_medmnist_retina_rgb(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "retinamnist.npz"
    _npz(p, rng.integers(0, 256, (10, 28, 28, 3), dtype=np.uint8), np.arange(10).reshape(10, 1) % 5)
    ds = load_dataset("medmnist", p, "val", image_size=32, augment=False)
    assert ds.task is RETINA and len(ds) == 10 and ds[3][0].shape == (3, 32, 32) and int(ds[3][1]) == 3


def test_medmnist_chest_gray(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "chestmnist.npz"
    labels = np.zeros((6, 14), np.uint8)
    labels[0, 2] = 1  # effusion -> Pleural Effusion
    labels[1, 9] = 1  # edema
    _npz(p, rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), labels)
    ds = load_dataset("medmnist", p, "train", image_size=28, augment=False, in_channels=1)
    assert ds.task is CHEXPERT and ds[0][0].shape == (1, 28, 28)
    assert ds[0][1].tolist() == [0, 0, 0, 0, 1] and ds[1][1].tolist() == [0, 0, 0, 1, 0]
    with pytest.raises(ConfigError, match="fixed official splits"):
        load_dataset("medmnist", p, "train", image_size=28, augment=False, split_file="x.csv")


def test_medmnist_bad_labels(tmp_path):
    p = tmp_path / "retinamnist.npz"
    _npz(p, np.zeros((4, 28, 28, 3), np.uint8), np.array([[0], [1], [7], [2]]))
    with pytest.raises(DataError, match="outside the grades 0-4"):
        load_dataset("medmnist", p, "train", image_size=28, augment=False)


def test_imagefolder(tmp_path, write_image_fn):
    root = tmp_path / "nat"
    for c in ("cat", "dog", "emu"):
        for i in range(12):
            write_image_fn(root / c / f"{i}.png", (20, 20), seed=i)
    sizes = {}
    for split in ("train", "val", "test"):
        try:
            ds = load_dataset("imagefolder", root, split, image_size=16, augment=True)
        except DataError:
            continue
        assert ds.task is None and ds.classes == ("cat", "dog", "emu")
        sizes[split] = len(ds)
        assert 0 <= int(ds[0][1]) < 3
    assert sum(sizes.values()) == 36


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path, "train", image_size=16, augment=False)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("aptos", tmp_path, "training", image_size=16, augment=False)


def test_imagefolder_presplit(tmp_path, write_image_fn):
    root = tmp_path / "nat"
    for split, n in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                write_image_fn(root / split / c / f"{i}.jpg", (20, 20), seed=i)
    (root / "val" / "b").rename(tmp_path / "gone")  # a class missing from val keeps train's index
    val = load_dataset("imagefolder", root, "val", image_size=16, augment=False)
    assert val.classes == ("a", "b") and len(val) == 2 and set(val.table.targets) == {0}
    assert len(load_dataset("imagefolder", root, "train", image_size=16, augment=False)) == 8


def test_referable():
    from transfusion.data import referable

    assert referable(np.arange(5)).tolist() == [False, False, True, True, True]
