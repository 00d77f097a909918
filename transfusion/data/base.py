"""The one Dataset class every loader returns: a table of items plus decoding, caching, checks.

Loaders (retina.py for EyePACS and APTOS, chexpert.py, medmnist.py, imagefolder.py, csvfile.py)
only parse their format into an :class:`ItemTable`; this module checks files, applies ``limit``,
logs the summary, builds the optional on-disk cache (uint8 ``.npy`` per split and size) and
serves ``(image, target, mask)``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from transfusion.data import splits as splits_mod
from transfusion.data.tasks import REFERABLE_GRADE, Task
from transfusion.data.transforms import Augment, ImageTransform, decode_array, decode_file
from transfusion.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class ItemTable:
    """Parsed items of one split. ``paths`` (files) or ``arrays`` (in-memory uint8 images)."""

    image_ids: list[str]
    patient_ids: list[str]
    targets: np.ndarray  # int64 (N,) or float32 (N, K)
    masks: np.ndarray  # float32 (N,) or (N, K)
    paths: list[str] | None = None
    arrays: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)  # "file, line n" per item, for error messages

    def __len__(self) -> int:
        return len(self.image_ids)

    def select(self, keep: np.ndarray) -> "ItemTable":
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        pick = lambda seq: [seq[i] for i in idx] if seq else seq  # noqa: E731
        return ItemTable(
            image_ids=pick(self.image_ids), patient_ids=pick(self.patient_ids),
            targets=self.targets[idx], masks=self.masks[idx], paths=pick(self.paths),
            arrays=None if self.arrays is None else self.arrays[idx], sources=pick(self.sources))


class ImageDataset(Dataset):
    """Items ``(image float32 [C,H,W], target, mask)``; see transfusion.data.load_dataset."""

    def __init__(self, *, dataset: str, root: str | Path, split: str, table: ItemTable,
                 task: Task | None, image_size: int, augment: Augment | None, in_channels: int,
                 fit: str, cache_dir: str | Path | None = None, skip_missing: bool = False,
                 limit: int | None = None, label_policy: str | None = None,
                 classes: tuple[str, ...] | None = None, extra: dict | None = None):
        self.dataset, self.root, self.split = dataset, str(root), split
        self.task, self.classes = task, classes
        self.image_size, self.in_channels, self.fit = int(image_size), int(in_channels), fit
        self.label_policy = label_policy
        self.extra = dict(extra or {})
        self.n_missing = 0
        self.n_unreadable = 0
        if self.image_size < 8:
            raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
        if table.paths is not None:
            table = self._drop_missing(table, skip_missing)
        if limit is not None:
            if limit <= 0:
                raise DataError(f"limit must be a positive number of images, got {limit}")
            if limit > len(table):
                raise DataError(f"{dataset} {split}: asked for {limit} images (--small-data / "
                                f"--limit) but the split has only {len(table)}; give at most "
                                f"{len(table)}, or leave the limit out to use them all")
            table = table.select(np.arange(min(limit, len(table))))
        splits_mod.check_not_empty(len(table), dataset, root, split)
        self.table = table
        self.transform = ImageTransform(self.in_channels, augment)
        self._cache: np.ndarray | None = None
        if cache_dir is not None:
            self._cache = self._build_cache(Path(cache_dir), skip_missing)
        info = self.describe()
        splits_mod.log_summary(dataset, split, info["counts"], info["n"], info["n_patients"])
        if split != "train" and info["single_class"]:
            log.warning("%s %s split: single class for %s; AUC is undefined there (reported as NaN)",
                        dataset, split, ", ".join(info["single_class"]))

    # ----- checks -----------------------------------------------------------------------------
    def _drop_missing(self, table: ItemTable, skip_missing: bool) -> ItemTable:
        exists = np.fromiter((os.path.isfile(p) for p in table.paths), dtype=bool, count=len(table))
        n_missing = int((~exists).sum())
        if n_missing:
            first = [f"{table.paths[i]} ({table.sources[i]})" if table.sources else table.paths[i]
                     for i in np.flatnonzero(~exists)[:3]]
            msg = (f"{self.dataset} {self.split}: {n_missing} of {len(table)} image files are missing, "
                   f"first: {'; '.join(first)}")
            if not skip_missing:
                raise DataError(msg + ". Put the images where the label file says (paths are relative "
                                "to the dataset root), or leave them out with "
                                "load_dataset(..., skip_missing=True)")
            log.warning("%s; skipped (skip_missing=True)", msg)
            self.n_missing = n_missing
            table = table.select(exists)
        return table

    # ----- decoding and cache -----------------------------------------------------------------
    def _decode(self, i: int) -> np.ndarray:
        t = self.table
        if t.arrays is not None:
            return decode_array(t.arrays[i], self.image_size, self.in_channels, self.fit)
        try:
            return decode_file(t.paths[i], self.image_size, self.in_channels, self.fit)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for broken files
            where = f" ({t.sources[i]})" if t.sources else ""
            raise DataError(f"cannot read image {t.paths[i]}{where}: {e}. Replace or remove the file, "
                            "or leave unreadable files out with load_dataset(..., skip_missing=True, "
                            "cache_dir=DIR)") from e

    def _cache_key(self) -> str:
        t = self.table
        ident = {"dataset": self.dataset, "root": os.path.abspath(self.root), "split": self.split,
                 "size": self.image_size, "channels": self.in_channels, "fit": self.fit,
                 "items": t.paths if t.paths is not None else hashlib.sha256(
                     np.ascontiguousarray(t.arrays).tobytes()).hexdigest()}
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def _build_cache(self, cache_dir: Path, skip_missing: bool) -> np.ndarray:
        file = cache_dir / (f"{self.dataset}-{self.split}-{self.image_size}px-{self.in_channels}ch-"
                            f"{self._cache_key()}.npy")
        if file.is_file():
            log.info("using cached images %s", file)
            return np.load(file, mmap_mode="r")
        n, s, c = len(self.table), self.image_size, self.in_channels
        out = np.zeros((n, s, s, c), dtype=np.uint8)
        bad: list[int] = []

        def one(i: int):
            try:
                out[i] = self._decode(i)
            except DataError:
                if not skip_missing:
                    raise
                bad.append(i)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(one, range(n)))
        if bad:
            bad.sort()
            log.warning("%s %s: %d unreadable images left out (skip_missing=True), first: %s",
                        self.dataset, self.split, len(bad), [self.table.paths[i] for i in bad[:3]])
            keep = np.ones(n, dtype=bool)
            keep[bad] = False
            self.n_unreadable = len(bad)
            self.table = self.table.select(keep)
            splits_mod.check_not_empty(len(self.table), self.dataset, self.root, self.split)
            out = out[keep]
            file = file.with_name(file.stem + f"-minus{len(bad)}.npy")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, file)
        log.info("cached %d decoded images at %s", len(out), file)
        return np.load(file, mmap_mode="r")

    # ----- Dataset API ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        arr = self._cache[i] if self._cache is not None else self._decode(i)
        image = self.transform(arr)
        t, m = self.table.targets[i], self.table.masks[i]
        if np.ndim(t) == 0:
            return image, torch.tensor(int(t), dtype=torch.int64), torch.tensor(float(m))
        return image, torch.from_numpy(np.asarray(t, np.float32)), torch.from_numpy(np.asarray(m, np.float32))

    # ----- description ------------------------------------------------------------------------
    def describe(self) -> dict:
        t = self.table
        counts: dict
        single: list[str] = []
        if self.task is not None and self.task.kind == "grade":
            counts = {f"grade{g}": int((t.targets == g).sum()) for g in range(5)}
            ref = int((t.targets >= REFERABLE_GRADE).sum())
            counts["referable"] = ref
            counts["non_referable"] = len(t) - ref
            if ref in (0, len(t)):
                single.append("referable")
        elif self.task is not None:
            counts = {}
            for k, name in enumerate(self.task.label_names):
                m = t.masks[:, k] > 0
                pos = int((t.targets[m, k] > 0.5).sum())
                counts[name] = {"positive": pos, "negative": int(m.sum()) - pos,
                                "ignored": int((~m).sum())}
                if pos == 0 or pos == int(m.sum()):
                    single.append(name)
        else:
            counts = {c: int((t.targets == k).sum()) for k, c in enumerate(self.classes or ())}
        return {
            "dataset": self.dataset, "root": self.root, "split": self.split, "n": len(t),
            "n_patients": len(set(t.patient_ids)), "task": None if self.task is None else self.task.name,
            "label_policy": self.label_policy, "image_size": self.image_size,
            "in_channels": self.in_channels, "counts": counts, "single_class": single,
            "n_missing_skipped": self.n_missing, "n_unreadable_skipped": self.n_unreadable,
            **self.extra,
        }
