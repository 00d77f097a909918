"""Training-state checkpoints (resume) and model checkpoints (``transfusion.checkpoints``' format).

A training state holds everything that decides the rest of the run: model, optimizer and
scheduler states, the RNG states (torch, CUDA, numpy, python) of every process, the step (which
is also the data sampler's position: the data order is a function of seed and step), and the
running train-loss accumulator. Files are written atomically (temp file + rename).
:func:`save_training_state` and :func:`restore_training_state` are the loop's two ends of it
(every process's RNG state gathered to rank 0; each process restores its own on resume).
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from transfusion.checkpoints import load_torch_file, write_model_file
from transfusion.errors import CheckpointError
from transfusion.train import distributed as D
from transfusion.utils import atomic_torch_save

log = logging.getLogger(__name__)

STATE_FORMAT = "transfusion-train-state"
STATE_VERSION = 1


def get_rng_state() -> dict:
    """The RNG states as tensors, lists and numbers only (files are read with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                    "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
          "python": {"version": int(version), "internal": list(internal),
                     "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n, p = st["numpy"], st["python"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_state(path: str | os.PathLike, *, run_id: str, step: int, model, optimizer, scheduler,
               rng: list[dict], sampler: dict, extra: dict) -> None:
    atomic_torch_save(path, {
        "format": STATE_FORMAT, "version": STATE_VERSION, "run_id": run_id, "step": step,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng, "sampler": sampler, "extra": extra})


def load_state(path: str | os.PathLike, run_id: str) -> dict:
    st = load_torch_file(path, "training checkpoint",
                         f"delete {path} to restart the run from scratch")
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a transfusion training checkpoint")
    if st.get("run_id") != run_id:
        raise CheckpointError(f"{path} belongs to run {st.get('run_id')}, not {run_id}: the run "
                              f"folder was copied or renamed; move the file away to restart")
    return st


def save_model_checkpoint(path: str | os.PathLike, model, model_name: str, meta: dict) -> None:
    """A model checkpoint (the format ``transfusion.checkpoints`` owns): registry models through
    ``transfusion.initializers.save_model_checkpoint`` (classes and channels read from the model,
    Inception's transform_input kept), other modules (test fakes) from their attributes."""
    if hasattr(model, "first_conv_key") and hasattr(model, "head_prefix"):
        from transfusion.initializers import save_model_checkpoint as save

        save(path, model, model_name, meta)
        return
    write_model_file(path, model.state_dict(), model_name=model_name,
                     num_classes=getattr(model, "num_classes", -1),
                     in_channels=getattr(model, "in_channels", -1), meta=meta)


def last_checkpoint(run_dir: Path) -> Path | None:
    from transfusion.train.run_folder import RunFolder

    p = RunFolder(Path(run_dir)).training_state
    return p if p.is_file() else None


def save_training_state(path: Path, ctx: D.DistContext, *, run_id: str, step: int, batch_size: int,
                        seed: int, model, optimizer, scheduler, acc: dict) -> None:
    """Every process's RNG state gathered, the training state written by rank 0, then a barrier."""
    rngs = D.gather_objects(ctx, get_rng_state())
    if ctx.is_main:
        save_state(path, run_id=run_id, step=step, model=model, optimizer=optimizer,
                   scheduler=scheduler, rng=rngs,
                   sampler={"seed": seed, "position": step * batch_size}, extra={"acc": acc})
    D.barrier(ctx)


def restore_training_state(path: Path, ctx: D.DistContext, run_id: str, model, optimizer,
                           scheduler) -> tuple[int, dict]:
    """Load ``path`` into the model, optimizer, scheduler and this process's RNGs; returns the
    step to continue from and the train-loss accumulator."""
    st = load_state(path, run_id)
    model.load_state_dict(st["model"])
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    rngs = st["rng"]
    if len(rngs) == ctx.world_size:
        set_rng_state(rngs[ctx.rank])
    else:
        log.warning("checkpoint was written by %d processes, resuming with %d: RNG streams "
                    "differ from an uninterrupted run", len(rngs), ctx.world_size)
        set_rng_state(rngs[0])
    return int(st["step"]), dict(st["extra"]["acc"])
