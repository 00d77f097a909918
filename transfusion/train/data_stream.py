"""The run's data: its datasets, and the training items as a function of (seed, step).

The data order is a function of (seed, step) (:class:`StepBatchSampler`) and each training item's
augmentation is drawn from a seed given by its position in the global stream of items
(:class:`SeededItems`), so data-loading workers, DDP process layouts and resumes do not change
them. Evaluation sets are read in contiguous per-process shards (:func:`shard_loader`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from transfusion.data.catalogue import synthetic_kind
from transfusion.errors import ConfigError
from transfusion.train import distributed as D


def cache_root() -> Path:
    return Path(os.environ.get("TRANSFUSION_CACHE", Path.home() / ".cache" / "transfusion"))


#: set to 1 (the demo preset does, for its runs): every split is decoded and resized once into
#: $TRANSFUSION_CACHE/decoded (one uint8 .npy per split and size, see data.base) instead of at
#: every read. The images are the same arrays either way, so the numbers and run ids are too;
#: meant for small images (32 px: 3 KB each), not for 587 px EyePACS (1 MB each).
DECODE_CACHE_ENV = "TRANSFUSION_DECODE_CACHE"


def decoded_images_dir() -> Path:
    """Where the decode cache keeps its .npy files."""
    return cache_root() / "decoded"


def decode_cache_dir() -> Path | None:
    """``decoded_images_dir()`` while DECODE_CACHE_ENV is 1, else None."""
    return decoded_images_dir() if os.environ.get(DECODE_CACHE_ENV) == "1" else None


class StepBatchSampler(Sampler):
    """Batches as a pure function of (seed, step): the global stream is the concatenation of
    per-epoch permutations of ``range(n)`` and step ``s`` takes items ``[s*B, (s+1)*B)`` of it
    (crossing epoch borders, nothing dropped); rank ``r`` of ``world`` takes its slice of each
    global batch. Starting at ``start_step`` is how a resumed run continues the same order."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ConfigError(f"batch size {batch_size} is not divisible by the {world} processes: "
                              f"pick a batch size that is a multiple of --nproc-per-node")
        self.n, self.B, self.seed = n, batch_size, seed
        self.start, self.total, self.rank, self.world = start_step, total_steps, rank, world
        self._perm_epoch, self._perm = -1, None

    def _perm_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def global_batch(self, step: int) -> list[int]:
        out = []
        for p in range(step * self.B, (step + 1) * self.B):
            out.append(int(self._perm_of(p // self.n)[p % self.n]))
        return out

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(index, item_seed)`` pairs of step ``step``; the seed is a function of the
        run seed and the item's position in the global stream (see :class:`SeededItems`)."""
        b = self.B // self.world
        lo = self.rank * b
        idx = self.global_batch(step)[lo:lo + b]
        return [(i, (self.seed << 40) + step * self.B + lo + j) for j, i in enumerate(idx)]

    def __iter__(self):
        for s in range(self.start, self.total):
            yield self.batch(s)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


class SeededItems(torch.utils.data.Dataset):
    """Training items keyed ``(index, item_seed)``: each item (its augmentation) is drawn with
    torch's RNG seeded by ``item_seed`` (and the caller's RNG left as it was). Augmentation is
    then a function of (run seed, position in the data stream) only: the same in worker processes,
    after a resume and in every DDP process layout."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.ds[index]


@dataclass
class RunData:
    """The datasets of one run: training (augmented as the recipe says), evaluation, the
    unaugmented training split (BatchNorm recalibration only) and the test split (when asked)."""

    root: str
    train: object
    eval: object
    plain_train: object | None = None
    test: object | None = None

    def describe(self) -> dict:
        """config.json's ``data`` entry."""
        d = {"root": self.root, "train": describe(self.train), "eval": describe(self.eval),
             "train_size": len(self.train), "eval_size": len(self.eval)}
        if self.test is not None:
            d.update(test=describe(self.test), test_size=len(self.test))
        return d


def load_run_data(spec, recipe, load_dataset, ensure_synthetic=None) -> RunData:
    """Every dataset the run needs, loaded before training so that a missing or empty split stops
    the run at once (one line)."""
    root = spec.data_root
    if str(root) == "synthetic":
        if ensure_synthetic is None:
            raise ConfigError("data_root 'synthetic' needs transfusion.data.synthetic")
        root = ensure_synthetic(synthetic_kind(spec.task), cache_root(),
                                n_images=spec.synthetic_images,
                                image_size=recipe.image_size, seed=spec.data_seed)
    common = dict(image_size=recipe.image_size, seed=spec.data_seed, label_policy=spec.label_policy,
                  in_channels=spec.in_channels)
    if decode_cache_dir() is not None:
        common["cache_dir"] = str(decode_cache_dir())
    train = load_dataset(spec.dataset, root, spec.split, augment=recipe.augment,
                         limit=spec.limit, **common)
    val = load_dataset(spec.dataset, root, spec.eval_split, augment=False,
                       limit=spec.eval_limit, **common)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"empty {'training' if len(train) == 0 else 'evaluation'} set for "
                          f"{spec.dataset} at {root}: check the root, the splits and the limits")
    data = RunData(str(root), train, val)
    if recipe.bn_recalibration_images > 0:
        data.plain_train = load_dataset(spec.dataset, root, spec.split, augment=False,
                                        limit=spec.limit, **common)
    if spec.test_split is not None:
        data.test = load_dataset(spec.dataset, root, spec.test_split, augment=False,
                                 limit=spec.eval_limit, **common)
        if len(data.test) == 0:
            raise ConfigError(f"empty test set (split {spec.test_split!r}) for {spec.dataset} at "
                              f"{root}: check the root, the split name and eval_limit")
    return data


def describe(ds) -> dict:
    d = ds.describe() if hasattr(ds, "describe") else {}
    return json.loads(json.dumps(d, default=str))


def train_loader(ds, sampler: StepBatchSampler, seed: int, num_workers: int,
                 pin_memory: bool) -> DataLoader:
    return DataLoader(SeededItems(ds), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))


def shard_loader(ds, ctx: D.DistContext, batch_size: int, seed: int, num_workers: int,
                 pin_memory: bool) -> DataLoader:
    """This process's contiguous shard of an evaluation set, in order."""
    shard = D.shard_range(len(ds), ctx.rank, ctx.world_size)
    return DataLoader(Subset(ds, list(shard)), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))
