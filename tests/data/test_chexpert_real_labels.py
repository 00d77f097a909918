"""The published CheXpert-v1.0-small train.csv (labels only) parses at full size.

The file lives beside the repository checkout in shared/data/ (../shared/data/ from the repo
root, the same layout in CI); set TRANSFUSION_SHARED_DATA to point elsewhere.
"""
import os
import time
from pathlib import Path

import numpy as np
import pytest

from transfusion.data import splits as S
from transfusion.data.chexpert import apply_policy, read_chexpert_csv

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = [Path(os.environ["TRANSFUSION_SHARED_DATA"])] if os.environ.get("TRANSFUSION_SHARED_DATA") else []
CANDIDATES += [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
LABELS = next((c / "chexpert_train.csv.gz" for c in CANDIDATES if (c / "chexpert_train.csv.gz").is_file()), None)

pytestmark = pytest.mark.skipif(
    LABELS is None, reason="chexpert_train.csv.gz not found in ../shared/data (beside the repository "
                           "checkout) or $TRANSFUSION_SHARED_DATA; it holds the published CheXpert labels")


@pytest.fixture(scope="module")
def table():
    t0 = time.process_time()
    t = read_chexpert_csv(LABELS)
    t.cpu_seconds = time.process_time() - t0
    return t


def test_full_file_counts(table):
    assert len(table) == 223_414
    at = table.raw[:, 0]  # Atelectasis, the counts the README gives
    assert int((at == -1).sum()) == 33_739
    assert int((at == 1).sum()) == 33_376
    assert int((at == 0).sum()) == 1_328
    assert int(np.isnan(at).sum()) == 154_971
    assert table.cpu_seconds < 10, f"parsing took {table.cpu_seconds:.1f} s of CPU"
    assert 0 < table.frontal.sum() < len(table)  # lateral views exist


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
def test_policies_at_full_size(table, policy):
    targets, masks = apply_policy(table.raw, policy)
    pos, unc, blank = table.raw == 1, table.raw == -1, np.isnan(table.raw)
    if policy == "ignore":
        assert (masks.sum(0) == len(table) - unc.sum(0)).all()
        assert (targets.sum(0) == pos.sum(0)).all()
        assert int(masks[:, 0].sum()) == 223_414 - 33_739
    elif policy == "zeros":
        assert masks.min() == 1 and (targets.sum(0) == pos.sum(0)).all()
    else:
        assert masks.min() == 1 and (targets.sum(0) == (pos | unc).sum(0)).all()
        assert int(targets[:, 0].sum()) == 33_376 + 33_739
    assert (targets[blank] == 0).all()  # blank = not mentioned = negative under every string policy


def test_patient_split_at_full_size(table):
    assigned = S.assign_splits(table.patient_ids, 0, S.TRAIN_VAL_FRACTIONS)
    tr = set(np.asarray(table.patient_ids, dtype=object)[assigned == "train"])
    va = set(np.asarray(table.patient_ids, dtype=object)[assigned == "val"])
    assert len(tr) + len(va) == len(set(table.patient_ids)) == 64_540
    assert not tr & va
    assert 0.08 < len(va) / (len(tr) + len(va)) < 0.12


def test_load_dataset_at_full_size_with_placeholder_images(tmp_path, table):
    """The whole pipeline on the real file: 100 placeholder images, the other rows skipped and counted."""
    from PIL import Image

    from transfusion.data import load_dataset

    base = tmp_path / "CheXpert-v1.0-small"
    base.mkdir()
    (base / "train.csv.gz").symlink_to(LABELS)
    for p in table.paths[:100]:
        f = tmp_path / p
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (12, 10), 128).save(f)
    ds = load_dataset("chexpert", tmp_path, "train", image_size=8, augment=False, skip_missing=True,
                      label_policy="ones")
    # no valid.csv here, so train.csv gives all three splits (80/10/10)
    assigned = S.assign_splits(table.patient_ids[:100], 0, S.DEFAULT_FRACTIONS)
    expect = int((table.frontal[:100] & (assigned == "train")).sum())
    assert len(ds) == expect > 0
    d = ds.describe()
    in_train = S.assign_splits(table.patient_ids, 0, S.DEFAULT_FRACTIONS) == "train"
    assert d["n_missing_skipped"] == int((table.frontal & in_train).sum()) - expect
    assert d["label_policy"] == "ones;blank=zeros" and ds[0][0].shape == (3, 8, 8)
