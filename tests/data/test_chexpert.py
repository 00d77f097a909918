import numpy as np
import pytest

from transfusion.data import CHEXPERT, load_dataset
from transfusion.data.chexpert import apply_policy, parse_label_policy, read_chexpert_csv
from transfusion.errors import ConfigError, DataError


def test_reads_train_with_lateral_blank_and_uncertain(chexpert_dir):
    t = read_chexpert_csv(chexpert_dir / "train.csv")
    assert len(t) == 24 + 8 and t.frontal.sum() == 24
    assert np.isnan(t.raw).any() and (t.raw == -1).any()
    assert t.patient_ids[0] == "00001" and t.paths[0].startswith("CheXpert-v1.0-small/train/")


@pytest.mark.parametrize("root_kind", ["base", "parent"])
def test_splits_by_patient_frontal_only(chexpert_dir, root_kind):
    root = chexpert_dir if root_kind == "base" else chexpert_dir.parent
    seen, n = {}, 0
    for split in ("train", "val"):
        ds = load_dataset("chexpert", root, split, image_size=20, augment=split == "train", in_channels=1,
                          seed=5) if _nonempty(root, split) else None
        if ds is None:
            continue
        assert ds.task is CHEXPERT
        n += len(ds)
        for pid in ds.table.patient_ids:
            assert seen.setdefault(pid, split) == split
        img, target, mask = ds[0]
        assert img.shape == (1, 20, 20) and target.shape == (5,) and mask.shape == (5,)
        assert all("frontal" in p for p in ds.table.paths)
    assert n == 24  # frontal images of train.csv only
    test = load_dataset("chexpert", root, "test", image_size=20, augment=False)  # valid.csv
    assert len(test) == 4 and test[0][0].shape == (3, 20, 20)
    assert set(np.unique(test.table.targets)) <= {0.0, 1.0} and test.table.masks.min() == 1.0


def _nonempty(root, split):
    try:
        load_dataset("chexpert", root, split, image_size=8, augment=False, seed=5)
        return True
    except DataError as e:
        assert "split is empty" in str(e)
        return False


def test_all_views(chexpert_dir, write_csv_fn):
    ids = chexpert_dir / "ids.csv"
    write_csv_fn(ids, "id,split", [[f"{p:05d}", "train"] for p in range(1, 13)])
    front = load_dataset("chexpert", chexpert_dir, "train", image_size=16, augment=False, split_file=str(ids))
    both = load_dataset("chexpert", chexpert_dir, "train", image_size=16, augment=False, split_file=str(ids),
                        frontal_only=False)
    assert len(front) == 24 and len(both) == 32


def test_policies_on_one_row():
    raw = np.array([[1.0, 0.0, -1.0, np.nan, -1.0]], np.float32)
    t, m = apply_policy(raw, "ignore")
    assert t.tolist() == [[1, 0, 0, 0, 0]] and m.tolist() == [[1, 1, 0, 1, 0]]
    t, m = apply_policy(raw, "zeros")
    assert t.tolist() == [[1, 0, 0, 0, 0]] and m.tolist() == [[1, 1, 1, 1, 1]]
    t, m = apply_policy(raw, "ones")
    assert t.tolist() == [[1, 0, 1, 0, 1]] and m.tolist() == [[1, 1, 1, 1, 1]]
    # per-label map (the CheXpert paper's best: ones for Atelectasis and Edema), blank masked
    t, m = apply_policy(raw, {"Consolidation": "ones", "default": "zeros", "blank": "ignore"})
    assert t.tolist() == [[1, 0, 1, 0, 0]] and m.tolist() == [[1, 1, 1, 0, 1]]
    assert parse_label_policy("ignore").name == "ignore;blank=zeros"
    with pytest.raises(ConfigError, match="unknown labels"):
        parse_label_policy({"Pneumonia": "ones"})
    with pytest.raises(ConfigError, match="unknown CheXpert label policy"):
        parse_label_policy("maybe")


def test_policies_differ_on_the_dataset(chexpert_dir, write_csv_fn):
    ids = chexpert_dir / "ids.csv"
    write_csv_fn(ids, "id,split", [[f"{p:05d}", "train"] for p in range(1, 13)])
    out = {}
    for pol in ("ignore", "zeros", "ones"):
        ds = load_dataset("chexpert", chexpert_dir, "train", image_size=8, augment=False, split_file=str(ids),
                          label_policy=pol)
        out[pol] = (ds.table.targets.sum(), ds.table.masks.sum())
        assert ds.describe()["label_policy"] == f"{pol};blank=zeros"
    assert out["ignore"][1] < out["zeros"][1] == out["ones"][1]
    assert out["ignore"][0] == out["zeros"][0] < out["ones"][0]


def test_valid_csv_must_be_binary(chexpert_dir, chexpert_header, chexpert_row_fn, write_csv_fn):
    rows = [chexpert_row_fn("CheXpert-v1.0-small/valid/patient00020/study1/view1_frontal.jpg", True,
                            ("1.0", "0.0", "-1.0", "0.0", "0.0"))]
    write_csv_fn(chexpert_dir / "valid.csv", chexpert_header, rows)
    with pytest.raises(DataError, match=r"valid.csv, line 2: Consolidation is -1.0; valid.csv holds only 0/1"):
        load_dataset("chexpert", chexpert_dir, "test", image_size=8, augment=False)


def test_bad_value_and_missing_column(chexpert_dir, chexpert_header, chexpert_row_fn, write_csv_fn):
    rows = [chexpert_row_fn("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", True,
                            ("2.0", "", "", "", ""))]
    write_csv_fn(chexpert_dir / "train.csv", chexpert_header, rows)
    with pytest.raises(DataError, match=r"train.csv, line 2: column 'Atelectasis' has '2.0'"):
        load_dataset("chexpert", chexpert_dir, "train", image_size=8, augment=False)
    write_csv_fn(chexpert_dir / "train.csv", chexpert_header.replace(",Edema", ",Oedema"), rows)
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) Edema"):
        load_dataset("chexpert", chexpert_dir, "train", image_size=8, augment=False)


def test_missing_images_reported_and_skipped(chexpert_dir, write_csv_fn):
    (chexpert_dir / "train/patient00001/study1/view1_frontal.jpg").unlink()
    ids = chexpert_dir / "ids.csv"
    write_csv_fn(ids, "id,split", [[f"{p:05d}", "train"] for p in range(1, 13)])
    with pytest.raises(DataError, match=r"1 of 24 image files are missing, first: .*patient00001/study1/"
                                        r"view1_frontal.jpg \(train.csv, line 2\)"):
        load_dataset("chexpert", chexpert_dir, "train", image_size=8, augment=False, split_file=str(ids))
    ds = load_dataset("chexpert", chexpert_dir, "train", image_size=8, augment=False, split_file=str(ids),
                      skip_missing=True)
    assert len(ds) == 23 and ds.describe()["n_missing_skipped"] == 1


def test_wrong_root_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match="CheXpert-v1.0-small folder"):
        load_dataset("chexpert", tmp_path, "train", image_size=8, augment=False)
