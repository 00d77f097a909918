"""Deterministic patient-level splits, user split files, and the per-split summary.

A patient goes to train / val / test by a hash of ``f"{seed}:{patient_id}"`` (SHA-256), so the
assignment of one patient never depends on which other patients are in the file, and no patient
is ever in two splits. A user's split file (CSV with columns ``id,split``; ``id`` is a patient id
or an image id) replaces the hash.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from transfusion.data.csvfile import read_text
from transfusion.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Default fractions when one labelled file must give all three splits.
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
#: Default fractions when the dataset has its own test file (EyePACS solution, CheXpert valid.csv).
TRAIN_VAL_FRACTIONS = {"train": 0.9, "val": 0.1}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def hash_unit(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, key)."""
    h = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_splits(patient_ids: Sequence[str], seed: int, fractions: dict[str, float]) -> np.ndarray:
    """Split name per item (array of str), decided per unique patient by :func:`hash_unit`."""
    names = list(fractions)
    edges = np.cumsum([fractions[n] for n in names])
    edges = edges / edges[-1]
    out = np.empty(len(patient_ids), dtype=object)
    cache: dict[str, str] = {}
    for i, pid in enumerate(patient_ids):
        s = cache.get(pid)
        if s is None:
            u = hash_unit(pid, seed)
            s = names[min(int(np.searchsorted(edges, u, side="right")), len(names) - 1)]
            cache[pid] = s
        out[i] = s
    return out


def read_split_file(path: str | Path) -> dict[str, str]:
    """Read a user's split file: CSV with header ``id,split`` (split in train/val/test)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist: give a CSV with columns id,split")
    mapping: dict[str, str] = {}
    reader = csv.reader(io.StringIO(read_text(path), newline=""))  # UTF-8, a BOM dropped
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["id", "split"]:
        raise DataError(f"{path}, line 1: the header must start with 'id,split' (got {header}); "
                        "write one row per patient or image id with its split (train, val or test)")
    for lineno, row in enumerate(reader, start=2):
        if not row or not row[0].strip():
            continue
        if len(row) < 2 or row[1].strip() not in SPLITS:
            raise DataError(f"{path}, line {lineno}: split must be one of {', '.join(SPLITS)}, "
                            f"got {row[1:2]}")
        mapping[row[0].strip()] = row[1].strip()
    if not mapping:
        raise DataError(f"split file {path} lists no ids: add rows 'id,split'")
    return mapping


def splits_from_file(mapping: dict[str, str], patient_ids: Sequence[str],
                     image_ids: Sequence[str], source: str) -> np.ndarray:
    """Split per item from a user mapping: an id may name a patient or an image. Unlisted -> None."""
    out = np.empty(len(patient_ids), dtype=object)
    for i, (pid, iid) in enumerate(zip(patient_ids, image_ids)):
        out[i] = mapping.get(iid, mapping.get(pid))
    missing = int(sum(s is None for s in out))
    if missing:
        log.warning("%s: %d items are not in the split file and are left out", source, missing)
    # a patient in two splits is a user error worth stopping for
    seen: dict[str, str] = {}
    for pid, s in zip(patient_ids, out):
        if s is None:
            continue
        if seen.setdefault(pid, s) != s:
            raise DataError(f"split file puts patient {pid!r} in both {seen[pid]!r} and {s!r}: "
                            "list each patient's images in one split only")
    return out


def check_not_empty(n: int, dataset: str, root, split: str) -> None:
    if n == 0:
        raise DataError(f"{dataset} at {root}: the {split!r} split is empty. Use more data, other split "
                        "fractions or a split file (split_file=...) that lists ids for this split")


def log_summary(dataset: str, split: str, counts: dict, n: int, n_patients: int | None) -> None:
    pat = f", {n_patients} patients" if n_patients is not None else ""
    if len(counts) > 12:  # many classes (imagefolder): a range is more readable than a list
        vals = [v for v in counts.values() if isinstance(v, int)]
        shown = f"{len(counts)} classes, {min(vals)}-{max(vals)} images each" if vals else counts
    else:
        shown = counts
    log.info("%s %s: %d images%s; counts %s", dataset, split, n, pat, shown)


def class_counts(values: Iterable) -> dict:
    return {str(k): int(v) for k, v in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}
