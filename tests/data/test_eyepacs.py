import numpy as np
import pytest
import torch

from transfusion.data import RETINA, load_dataset
from transfusion.errors import DataError


def _all(ds):
    return [ds[i] for i in range(len(ds))]


def test_targets_splits_and_items(eyepacs_dir):
    seen = {}
    total = 0
    for split in ("train", "val", "test"):
        ds = load_dataset("eyepacs", eyepacs_dir, split, image_size=24, augment=split == "train", seed=3)
        assert ds.task is RETINA and ds.task.num_outputs == 5
        total += len(ds)
        for img, grade, mask in _all(ds):
            assert img.shape == (3, 24, 24) and img.dtype == torch.float32
            assert grade.dtype == torch.int64 and 0 <= int(grade) <= 4 and float(mask) == 1.0
        for pid in ds.table.patient_ids:
            assert seen.setdefault(pid, split) == split, "a patient is in two splits"
        d = ds.describe()
        assert d["n"] == len(ds) and sum(d["counts"][f"grade{g}"] for g in range(5)) == len(ds)
    assert total == 40
    # labels read from the CSV: 100_left -> grade 0, 100_right -> 1
    ds = load_dataset("eyepacs", eyepacs_dir, "train", image_size=24, augment=False, seed=3)
    by_id = dict(zip(ds.table.image_ids, ds.table.targets))
    for name, g in by_id.items():
        p = int(name.split("_")[0]) - 100
        assert g == (p + name.endswith("right")) % 5


def test_split_is_deterministic_and_seeded(eyepacs_dir):
    a = load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False, seed=0).table.image_ids
    b = load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False, seed=0).table.image_ids
    c = load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False, seed=1).table.image_ids
    assert a == b and a != c


def test_test_file_with_usage(eyepacs_dir, write_csv_fn, write_image_fn):
    rows = []
    for k in range(6):
        name = f"{500 + k}_left"
        write_image_fn(eyepacs_dir / "test" / f"{name}.jpeg", seed=k)
        rows.append([name, k % 5, "Public" if k < 2 else "Private"])
    write_csv_fn(eyepacs_dir / "retinopathy_solution.csv", "image,level,Usage", rows)
    ds = load_dataset("eyepacs", eyepacs_dir, "test", image_size=16, augment=False)
    assert len(ds) == 6 and ds.describe()["usage"] == {"Public": 2, "Private": 4}
    tr = load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False)
    va = load_dataset("eyepacs", eyepacs_dir, "val", image_size=16, augment=False)
    assert len(tr) + len(va) == 40  # all of trainLabels goes to train/val when a test file exists


def test_missing_images_error_and_skip(eyepacs_dir, write_csv_fn):
    for name in ("100_left", "101_left", "102_right"):
        (eyepacs_dir / "train" / f"{name}.jpeg").unlink()
    ids = eyepacs_dir / "all.csv"
    write_csv_fn(ids, "id,split", [[str(100 + p), "train"] for p in range(20)])
    with pytest.raises(DataError, match=r"3 of 40 image files are missing, first: .*100_left.jpeg "
                                        r"\(trainLabels.csv, line 2\)"):
        load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False, split_file=str(ids))
    n = 0
    skipped = 0
    for s in ("train", "val", "test"):
        ds = load_dataset("eyepacs", eyepacs_dir, s, image_size=16, augment=False, skip_missing=True)
        n += len(ds)
        skipped += ds.describe()["n_missing_skipped"]
    assert n == 37 and skipped == 3


def test_bad_level_names_line(eyepacs_dir):
    text = (eyepacs_dir / "trainLabels.csv").read_text().splitlines()
    text[5] = text[5].split(",")[0] + ",7"
    (eyepacs_dir / "trainLabels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"trainLabels.csv, line 6: level must be an integer in 0..4, got '7'"):
        load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False)


def test_missing_column(eyepacs_dir, write_csv_fn):
    write_csv_fn(eyepacs_dir / "trainLabels.csv", "image,grade", [["100_left", 0]])
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) level"):
        load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False)


def test_unreadable_image_named(eyepacs_dir, write_csv_fn):
    (eyepacs_dir / "train" / "100_left.jpeg").write_bytes(b"not a jpeg")
    ids = eyepacs_dir / "ids.csv"
    write_csv_fn(ids, "id,split", [["100", "test"], ["101", "test"]])
    ds = load_dataset("eyepacs", eyepacs_dir, "test", image_size=16, augment=False, split_file=str(ids))
    i = ds.table.image_ids.index("100_left")
    with pytest.raises(DataError, match=r"cannot read image .*100_left.jpeg \(trainLabels.csv, line 2\)"):
        ds[i]
    ds = load_dataset("eyepacs", eyepacs_dir, "test", image_size=16, augment=False, split_file=str(ids),
                      skip_missing=True, cache_dir=str(eyepacs_dir / "cache"))
    assert len(ds) == 3 and ds.describe()["n_unreadable_skipped"] == 1


def test_split_file_overrides(eyepacs_dir, write_csv_fn):
    ids = eyepacs_dir / "ids.csv"
    write_csv_fn(ids, "id,split", [["100", "val"], ["101_left", "val"], ["102", "train"]])
    ds = load_dataset("eyepacs", eyepacs_dir, "val", image_size=16, augment=False, split_file=str(ids))
    assert sorted(ds.table.image_ids) == ["100_left", "100_right", "101_left"]
    write_csv_fn(ids, "id,split", [["100", "val"], ["100_left", "train"]])
    with pytest.raises(DataError, match="both"):
        load_dataset("eyepacs", eyepacs_dir, "val", image_size=16, augment=False, split_file=str(ids))


def test_empty_split_is_an_error(eyepacs_dir, write_csv_fn):
    ids = eyepacs_dir / "ids.csv"
    write_csv_fn(ids, "id,split", [["100", "train"]])
    with pytest.raises(DataError, match="'test' split is empty"):
        load_dataset("eyepacs", eyepacs_dir, "test", image_size=16, augment=False, split_file=str(ids))


def test_single_class_eval_set_warns(eyepacs_dir, caplog, write_csv_fn):
    ids = eyepacs_dir / "ids.csv"
    write_csv_fn(ids, "id,split", [["100_left", "test"], ["101_left", "test"]])  # grades 0 and 1
    ds = load_dataset("eyepacs", eyepacs_dir, "test", image_size=16, augment=False, split_file=str(ids))
    assert ds.describe()["single_class"] == ["referable"]
    assert "single class" in caplog.text


def test_cache_gives_same_pixels(eyepacs_dir, tmp_path):
    plain = load_dataset("eyepacs", eyepacs_dir, "train", image_size=20, augment=False)
    cached = load_dataset("eyepacs", eyepacs_dir, "train", image_size=20, augment=False, cache_dir=str(tmp_path / "c"))
    again = load_dataset("eyepacs", eyepacs_dir, "train", image_size=20, augment=False, cache_dir=str(tmp_path / "c"))
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
    for i in (0, len(plain) - 1):
        assert torch.equal(plain[i][0], cached[i][0]) and torch.equal(plain[i][0], again[i][0])


def test_limit_and_gray(eyepacs_dir):
    ds = load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=False, limit=5, in_channels=1)
    assert len(ds) == 5 and ds[0][0].shape == (1, 16, 16)
    assert np.isfinite(ds[0][0].numpy()).all()


def test_dataloader_workers_decode(eyepacs_dir):
    from torch.utils.data import DataLoader

    ds = load_dataset("eyepacs", eyepacs_dir, "train", image_size=16, augment=True)
    x, y, m = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64 and m.shape == (4,)
