"""The step-based training loop: one :class:`~transfusion.train.spec.RunSpec` -> one run folder.

``run_training(spec, runs_dir)`` trains for the recipe's number of steps, evaluates every
``eval_every`` steps (and at step 0 and at the last step) on a fixed evaluation set, logs to
``metrics.jsonl`` + ``metrics.csv``, checkpoints every ``checkpoint_every`` steps and on
SIGINT/SIGTERM, and writes ``final.json`` at the end. A finished run is skipped; an interrupted one
resumes from ``checkpoints/last.pt`` and ends with the same metrics as an uninterrupted run
(same seed, CPU, deterministic kernels): the data order is a function of (seed, step), each
training item's augmentation is drawn from a seed given by its position in the data stream
(:class:`SeededItems`, so data-loading workers and DDP processes do not change it), and the
model, optimizer, scheduler and RNG states are restored.

No host sync per step (issue 18): the training loss is summed on the device (:class:`LossWindow`)
and read, and checked for NaN/Inf, only at train rows (every ``log_every`` steps), evaluations,
checkpoints and the end; a NaN stops the run with one line naming the steps since the last check,
before any checkpoint could hold it. Under DDP the processes agree on a stop signal at those same
points (each agreement is a collective), so a SIGTERM is honoured within ``log_every`` steps.

Run folder ``runs/<run_id>/``: config.json (spec, resolved recipe, schedule in steps, task, data
description, environment), init_summary.json, metrics.jsonl, metrics.csv,
checkpoints/{step0.pt (model checkpoint, models-stream format), step<N>.pt (the same format, at
every ``snapshot_every``-th step when the recipe asks for snapshots; kept after the end),
last.pt (training state, while the run is unfinished; kept after the end only with
keep_training_state)}, model_final.pt (model checkpoint), final.json, tensorboard/ (event files with metrics.jsonl's numbers, when the
tensorboard package is installed) and .lock (the writer's pid: one process per run folder).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, Subset

from transfusion.errors import ConfigError
from transfusion.train import distributed as D
from transfusion.train import metrics as M
from transfusion.train.evaluation import recalibrated_batchnorm, recalibration_loader
from transfusion.run_lock import RunLock
from transfusion.train.run_folder import RunFolder
from transfusion.train.checkpoint import (get_rng_state, last_checkpoint, load_state,
                                          save_model_checkpoint, save_state, seed_everything,
                                          set_rng_state)
from transfusion.train.recipes import (Recipe, describe_schedule, get_recipe, lr_factor,
                                       steps_per_epoch)
from transfusion.utils import (atomic_write_bytes, atomic_write_json, atomic_write_text,
                               remove_stale_temp_files)
from transfusion.validation import check_model_input

log = logging.getLogger(__name__)

SYNTHETIC_KIND = {"retina": "fundus", "chexpert": "chexpert", "natural": "natural"}


# ------------------------------------------------------------------------------ components
@dataclass
class Components:
    """What the loop gets from the other streams (tests pass small fakes)."""

    build_model: Callable  # (name, num_classes, in_channels) -> nn.Module
    initialize: Callable  # (model, method, *, model_name, checkpoint, upto, seed) -> dict
    load_dataset: Callable  # (name, root, split, *, image_size, augment, seed, label_policy, in_channels, limit)
    ensure_synthetic: Callable | None = None  # (kind, cache_root, n_images, image_size, seed) -> Path


def default_components() -> Components:
    try:
        from transfusion.data import load_dataset
        from transfusion.data.synthetic import ensure_synthetic
        from transfusion.initializers import initialize
        from transfusion.models import build_model
    except ImportError as e:
        raise ConfigError(f"training needs transfusion.models, transfusion.initializers and "
                          f"transfusion.data, which are not importable here ({e}): install the full "
                          f"package") from None
    return Components(build_model=build_model, initialize=initialize, load_dataset=load_dataset,
                      ensure_synthetic=ensure_synthetic)


def cache_root() -> Path:
    return Path(os.environ.get("TRANSFUSION_CACHE", Path.home() / ".cache" / "transfusion"))


# ------------------------------------------------------------------------------------ task
@dataclass
class TaskInfo:
    name: str
    kind: str  # grade | multilabel | multiclass
    num_outputs: int
    label_names: tuple

    @property
    def headline(self) -> str:
        return M.HEADLINE[self.kind]


def task_info(ds, task_name: str) -> TaskInfo:
    t = getattr(ds, "task", None)
    if t is not None:
        return TaskInfo(t.name, t.kind, int(t.num_outputs), tuple(t.label_names))
    classes = getattr(ds, "classes", None)
    if classes:
        return TaskInfo(task_name, "multiclass", len(classes), tuple(classes))
    raise ConfigError("the dataset has neither .task nor .classes: cannot tell what to train")


def loss_fn(kind: str, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
            reduction: str = "mean") -> torch.Tensor:
    """grade / multiclass: cross-entropy; multilabel: BCE-with-logits over unmasked labels.
    ``reduction="sum"`` returns (sum, count) for exact averaging over batches."""
    if kind in ("grade", "multiclass"):
        per = F.cross_entropy(logits, target.long(), reduction="none")
        s, n = per.sum(), torch.tensor(float(per.numel()))
    elif kind == "multilabel":
        per = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none") * mask
        s, n = per.sum(), mask.sum().clamp_min(1.0)
    else:
        raise ConfigError(f"unknown task kind {kind!r}")
    return (s, n) if reduction == "sum" else s / n


def compute_metrics(task: TaskInfo, logits, targets, masks) -> dict:
    if task.kind == "grade":
        return M.retina_metrics(logits, targets)
    if task.kind == "multilabel":
        return M.chexpert_metrics(logits, targets, masks, task.label_names)
    return M.multiclass_metrics(logits, targets)


# --------------------------------------------------------------------------------- sampling
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


# --------------------------------------------------------------------------------- metrics log
class MetricsLog:
    """metrics.jsonl (one JSON object per line, appended), metrics.csv (rewritten from it) and,
    when TensorBoard is installed, event files in tensorboard/ with the same numbers (tags
    ``train/<key>`` and ``eval/<key>``, by step). Main process only (``enabled``)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        folder = RunFolder(run_dir)
        self.jsonl, self.csv, self.tb_dir = folder.metrics_jsonl, folder.metrics_csv, folder.tensorboard
        self.enabled = enabled
        self.tb = None

    def start(self, resume_step: int | None) -> None:
        """A fresh start drops what a run that died before its first checkpoint logged; a resume
        drops what was logged after the checkpoint it resumes from (it will be redone): in
        metrics.jsonl by rewriting it, in TensorBoard by ``purge_step`` (events at later steps
        are discarded when read), so no scalar appears twice."""
        if not self.enabled:
            return
        if resume_step is None:
            if self.jsonl.exists():
                self.jsonl.unlink()
            if self.tb_dir.is_dir():
                shutil.rmtree(self.tb_dir)
        else:
            self.truncate_after(resume_step)
        self.tb = tensorboard_writer(self.tb_dir, None if resume_step is None else resume_step + 1)

    def rows(self) -> list[dict]:
        return M.read_metrics(self.jsonl) if self.jsonl.is_file() else []

    def truncate_after(self, step: int) -> None:
        """Drop records logged after the checkpoint we resume from (they will be redone)."""
        if not self.enabled or not self.jsonl.is_file():
            return
        rows = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self.write_csv()

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{row['kind']}/{k}", v, row["step"])

    def write_csv(self) -> None:
        if not self.enabled:
            return
        rows = self.rows()
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.csv, buf.getvalue())
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


_TB_SAID = False


def tensorboard_writer(log_dir: Path, purge_step: int | None):
    """torch's SummaryWriter on ``log_dir``, or None: without the tensorboard package (one log
    line per process says how to get it) or with TRANSFUSION_TENSORBOARD=0."""
    global _TB_SAID
    if os.environ.get("TRANSFUSION_TENSORBOARD", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken tensorboard/protobuf pair
        if not _TB_SAID:
            _TB_SAID = True
            why = "" if isinstance(e, ImportError) else f" (importing it failed: {e})"
            log.info("TensorBoard event files are off%s: `pip install tensorboard` (or "
                     "transfusion[tensorboard]) to get runs/<id>/tensorboard/ beside metrics.jsonl",
                     why)
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


class LossWindow:
    """The training loss summed on the device since the last train row, so that a step makes no
    host sync (a ``float(loss)`` per step stalls a GPU's queue). float64 (float32 on devices
    without it, e.g. mps): the same additions, in the same order, as summing Python floats, so
    CPU metrics and exact resume are unchanged. ``checked``: the step of the last NaN/Inf check."""

    def __init__(self, device: torch.device, loss_sum: float = 0.0, checked: int = 0) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sum = torch.tensor(float(loss_sum), dtype=dtype, device=device)
        self.checked = checked

    def add(self, loss: torch.Tensor) -> None:
        self.sum.add_(loss.detach().to(self.sum.dtype))

    def value(self) -> float:
        return float(self.sum)  # the host sync

    def reset(self) -> None:
        self.sum.zero_()


# ------------------------------------------------------------------------------------ signals
class StopRequest:
    """Catches SIGINT/SIGTERM while training (main thread only) so the loop can checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        if self.signum is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint after this step, then stopping",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


# ---------------------------------------------------------------------------------- the loop
def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _autocast(recipe: Recipe, device: torch.device):
    if recipe.amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(x, device, channels_last=False):
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def save_test_outputs(path: Path, logits: torch.Tensor, targets: torch.Tensor,
                      masks: torch.Tensor) -> None:
    """The test split's gathered outputs as npz (see ``RunFolder.test_outputs``), written atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, logits=logits.float().numpy(), targets=targets.numpy(),
                        masks=masks.float().numpy())
    atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def evaluate(model, loader, task: TaskInfo, recipe: Recipe, ctx: D.DistContext,
             keep: list | None = None) -> dict:
    """Metrics (and the mean loss) on the evaluation set; shards gathered before any metric.
    ``keep``: a list that receives the gathered (logits, targets, masks)."""
    was = model.training
    model.eval()
    lg, tg, mk = [], [], []
    for x, y, m in loader:
        with _autocast(recipe, ctx.device):
            out = model(_to(x, ctx.device, recipe.channels_last))
        lg.append(out.float().cpu())
        tg.append(y.cpu())
        mk.append(m.float().cpu())
    model.train(was)
    lab = (0, task.num_outputs) if task.kind == "multilabel" else (0,)  # an empty shard (n < world)
    empty = (torch.zeros(0, task.num_outputs), torch.zeros(lab, dtype=torch.long
                                                        if task.kind != "multilabel" else torch.float),
             torch.zeros(lab))
    parts = [torch.cat(p) if p else e for p, e in zip((lg, tg, mk), empty)]
    logits, targets, masks = D.gather_cat(ctx, parts)
    if keep is not None:
        keep.append((logits, targets, masks))
    s, n = loss_fn(task.kind, logits, targets, masks, reduction="sum")
    out = {"eval_loss": float(s / n)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", M.MetricWarning)
        out.update(compute_metrics(task, logits, targets, masks))
    for w in caught:  # e.g. a single-class evaluation set: NaN, logged once per process
        msg = str(w.message)
        if ctx.is_main and msg not in _WARNED:
            _WARNED.add(msg)
            log.warning("%s", msg)
    return out


_WARNED: set[str] = set()


def _load_data(spec, recipe: Recipe, comps: Components):
    root = spec.data_root
    if str(root) == "synthetic":
        if comps.ensure_synthetic is None:
            raise ConfigError("data_root 'synthetic' needs transfusion.data.synthetic")
        root = comps.ensure_synthetic(SYNTHETIC_KIND[spec.task], cache_root(),
                                      n_images=spec.synthetic_images,
                                      image_size=recipe.image_size, seed=spec.data_seed)
    common = dict(image_size=recipe.image_size, seed=spec.data_seed, label_policy=spec.label_policy,
                  in_channels=spec.in_channels)
    train = comps.load_dataset(spec.dataset, root, spec.split, augment=recipe.augment,
                               limit=spec.limit, **common)
    val = comps.load_dataset(spec.dataset, root, spec.eval_split, augment=False,
                             limit=spec.eval_limit, **common)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"empty {'training' if len(train) == 0 else 'evaluation'} set for "
                          f"{spec.dataset} at {root}: check the root, the splits and the limits")
    return str(root), train, val


def _load_extra_data(spec, recipe: Recipe, comps: Components, root: str):
    """The unaugmented training split (BatchNorm recalibration) and the test split, each None
    when the recipe / spec does not ask for it; loaded before training so that a missing split
    stops the run at once."""
    common = dict(image_size=recipe.image_size, seed=spec.data_seed, label_policy=spec.label_policy,
                  in_channels=spec.in_channels)
    plain = test = None
    if recipe.bn_recalibration_images > 0:
        plain = comps.load_dataset(spec.dataset, root, spec.split, augment=False, limit=spec.limit,
                                   **common)
    if spec.test_split is not None:
        test = comps.load_dataset(spec.dataset, root, spec.test_split, augment=False,
                                  limit=spec.eval_limit, **common)
        if len(test) == 0:
            raise ConfigError(f"empty test set (split {spec.test_split!r}) for {spec.dataset} at "
                              f"{root}: check the root, the split name and eval_limit")
    return plain, test


def _describe(ds) -> dict:
    d = ds.describe() if hasattr(ds, "describe") else {}
    return json.loads(json.dumps(d, default=str))


def _environment() -> dict:
    try:
        from transfusion.environment import environment_info

        return environment_info()
    except Exception as e:  # noqa: BLE001 - the environment record must never stop a run
        return {"error": f"environment_info failed: {e}"}


def run_training(spec, runs_dir: str | os.PathLike = "runs", *, device: str | None = None,
                 num_workers: int = 0, max_steps_this_session: int | None = None,
                 progress: bool | None = None, components: Components | None = None,
                 keep_training_state: bool = False) -> dict:
    """Train one run (see the module docstring); returns final.json's content, or a status dict
    ``{"status": "interrupted", "step": ...}`` if it stopped early (signal or
    ``max_steps_this_session``, a test hook). Works unchanged under torchrun (DDP).

    One process writes a run folder at a time (``transfusion.run_lock``: a second one gets a
    RunInUseError naming the first); a run removes its stale temp files when it starts, and
    deletes ``checkpoints/last.pt`` (training state, only needed to resume) once it has finished
    unless ``keep_training_state``."""
    runs_dir = Path(runs_dir)
    run_dir = runs_dir / spec.run_id
    final_path = RunFolder(run_dir).final
    if final_path.is_file():
        log.info("run %s is already finished (%s): nothing to do", spec.run_id, final_path)
        return json.loads(final_path.read_text())
    ctx = D.setup(device)
    lock = RunLock(run_dir)
    try:
        if get_recipe(spec.recipe_name, spec.recipe_overrides()).sync_bn:
            D.check_sync_batchnorm(ctx)  # one line, before any work, where it cannot run
            if not ctx.distributed:
                log.info("sync_bn=true has no effect with one process (its BatchNorm sees the "
                         "whole batch)")
        if ctx.is_main:
            lock.acquire()
            if final_path.is_file():  # another process finished it while we waited to start
                return json.loads(final_path.read_text())
            stale = remove_stale_temp_files(run_dir)
            if stale:
                log.info("run %s: removed %d stale temp file(s) left by an interrupted write: %s",
                         spec.run_id, len(stale), [p.name for p in stale[:3]])
        with contextlib.ExitStack() as closing:
            result = _train(spec, run_dir, ctx, num_workers, max_steps_this_session, progress,
                            components or default_components(), closing)
        if ctx.is_main and result.get("status") == "finished" and not keep_training_state:
            state = last_checkpoint(run_dir)
            if state is not None:
                state.unlink()
        return result
    finally:
        lock.release()
        D.teardown(ctx)


def _train(spec, run_dir: Path, ctx: D.DistContext, num_workers: int,
           max_steps_this_session: int | None, progress: bool | None, comps: Components,
           closing: contextlib.ExitStack) -> dict:
    t_start = time.perf_counter()
    recipe = get_recipe(spec.recipe_name, spec.recipe_overrides())
    if recipe.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = not recipe.deterministic
    check_model_input(spec.model, recipe.image_size, max(1, recipe.batch_size // ctx.world_size),
                      spec.in_channels, ctx.device)
    main = ctx.is_main
    folder = RunFolder(run_dir)
    ckpt_dir = folder.checkpoints
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(spec.seed)
    root, train_ds, eval_ds = _load_data(spec, recipe, comps)
    plain_train_ds, test_ds = _load_extra_data(spec, recipe, comps, root)
    task = task_info(train_ds, spec.task)
    spe = steps_per_epoch(len(train_ds), recipe.batch_size)
    total = recipe.steps

    model = comps.build_model(spec.model, num_classes=task.num_outputs, in_channels=spec.in_channels)
    init_summary = comps.initialize(model, spec.init, model_name=spec.model,
                                    checkpoint=spec.checkpoint, upto=spec.upto, seed=spec.seed)
    model.to(ctx.device)
    if recipe.sync_bn:
        model = D.use_sync_batchnorm(ctx, model)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)

    config = {
        "run_id": spec.run_id, "spec": spec.to_dict(), "recipe": recipe.to_dict(),
        "schedule": describe_schedule(recipe, spe), "task": task.__dict__ | {"headline": task.headline},
        "data": {"root": root, "train": _describe(train_ds), "eval": _describe(eval_ds),
                 "train_size": len(train_ds), "eval_size": len(eval_ds),
                 **({"test": _describe(test_ds), "test_size": len(test_ds)} if test_ds else {})},
        # flat copies of what result tables need most
        "model": spec.model, "init": spec.init, "seed": spec.seed, "label_policy": spec.label_policy,
        "optimizer": recipe.optimizer, "lr": recipe.lr, "batch_size": recipe.batch_size,
        "image_size": recipe.image_size, "steps": total,
        "runtime": {"device": str(ctx.device), "world_size": ctx.world_size,
                    "num_workers": num_workers},
        "environment": _environment(),
    }
    cfg_path = folder.config
    if main:
        if cfg_path.is_file():
            old = json.loads(cfg_path.read_text())
            if old.get("spec") != json.loads(json.dumps(spec.to_dict())):
                raise ConfigError(f"{cfg_path} holds a different spec than run {spec.run_id}: the "
                                  f"folder was edited or copied; move it away to start afresh")
        else:
            atomic_write_json(cfg_path, config)

    def record_session(start_step: int) -> None:
        """config.json's ``sessions``: where and from which step each session trained."""
        if main:
            cfg = json.loads(cfg_path.read_text())
            cfg.setdefault("sessions", []).append(
                {**config["runtime"], "from_step": start_step,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            atomic_write_json(cfg_path, cfg)

    # ---- optimizer, schedule
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe, spe))

    # ---- resume or start
    mlog = MetricsLog(run_dir, main)
    closing.callback(mlog.close)
    start, acc = 0, {"loss_sum": 0.0, "loss_n": 0, "images": 0, "time": 0.0}
    ck = last_checkpoint(run_dir)
    if ck is not None:
        st = load_state(ck, spec.run_id)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        rngs = st["rng"]
        if len(rngs) == ctx.world_size:
            set_rng_state(rngs[ctx.rank])
        else:
            log.warning("checkpoint was written by %d processes, resuming with %d: RNG streams "
                        "differ from an uninterrupted run", len(rngs), ctx.world_size)
            set_rng_state(rngs[0])
        start, acc = int(st["step"]), dict(st["extra"]["acc"])
        mlog.start(resume_step=start)
        log.info("run %s: resuming from step %d of %d (%s)", spec.run_id, start, total, ck)
    else:
        if main:
            atomic_write_json(folder.init_summary, init_summary)
            save_model_checkpoint(folder.step0, model, spec.model,
                                  {"run_id": spec.run_id, "step": 0, "init": spec.init})
        mlog.start(resume_step=None)  # drops what a run that died before its first checkpoint logged
        log.info("run %s: training %s (%s init) on %s for %d steps -> %s", spec.run_id,
                 spec.model, spec.init, spec.dataset, total, run_dir)

    record_session(start)
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    else:
        net = model

    sampler = StepBatchSampler(len(train_ds), recipe.batch_size, spec.seed, start, total,
                               ctx.rank, ctx.world_size)
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(SeededItems(train_ds), batch_sampler=sampler, num_workers=num_workers,
                              pin_memory=pin, generator=torch.Generator().manual_seed(spec.seed))

    def shard_loader(ds):
        shard = D.shard_range(len(ds), ctx.rank, ctx.world_size)
        return DataLoader(Subset(ds, list(shard)), batch_size=recipe.eval_batch_size,
                          shuffle=False, num_workers=num_workers, pin_memory=pin,
                          generator=torch.Generator().manual_seed(spec.seed))

    eval_loader = shard_loader(eval_ds)
    recal_loader = (recalibration_loader(plain_train_ds, recipe.bn_recalibration_images,
                                         recipe.batch_size, spec.seed, num_workers, pin)
                    if plain_train_ds is not None else None)

    def forward(m, x):
        with _autocast(recipe, ctx.device):
            return m(_to(x, ctx.device, recipe.channels_last))

    def measure(loader, keep: list | None = None) -> dict:
        D.broadcast_buffers(ctx, model)  # every shard evaluated with the model rank 0 saves
        with recalibrated_batchnorm(model, recal_loader, forward, ctx):
            return evaluate(model, loader, task, recipe, ctx, keep)

    def do_eval(step: int) -> dict:
        t0 = time.perf_counter()
        res = measure(eval_loader)
        row = {"step": step, "kind": "eval", **res, "eval_s": round(time.perf_counter() - t0, 3)}
        mlog.append(row)
        mlog.write_csv()
        if main:
            log.info("step %d/%d eval: %s %.4f, loss %.4f", step, total, task.headline,
                     res.get(task.headline, math.nan), res["eval_loss"])
        return row

    def save_ckpt(step: int) -> None:
        rngs = D.gather_objects(ctx, get_rng_state())
        if main:
            save_state(folder.training_state, run_id=spec.run_id, step=step, model=model,
                       optimizer=opt, scheduler=sched, rng=rngs,
                       sampler={"seed": spec.seed, "position": step * recipe.batch_size},
                       extra={"acc": acc})
        D.barrier(ctx)

    def save_snapshot(step: int) -> None:
        """The model after ``step`` steps, in step0.pt's format (weights only: nothing of it is
        read on resume, so a redone step rewrites the same file, atomically, main process only)."""
        if main:
            save_model_checkpoint(folder.snapshot(step), model, spec.model,
                                  {"run_id": spec.run_id, "step": step, "init": spec.init,
                                   "snapshot_every": recipe.snapshot_every})

    last_eval = None
    if start == 0:
        last_eval = do_eval(0)

    show_bar = main and (progress if progress is not None else sys.stderr.isatty())
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc=spec.run_id)

    step, session_steps, stopped_by = start, 0, None
    window = LossWindow(ctx.device, acc["loss_sum"], start)

    def check_loss(at: int) -> None:
        """The one host sync of the loss: copy the window's sum into ``acc`` and stop on NaN/Inf
        (all processes together). Called at train rows, evaluations, checkpoints and the end."""
        if window.checked == at:
            return
        t0 = time.perf_counter()
        total_loss = window.value()
        acc["time"] += time.perf_counter() - t0  # on CUDA: the queued work of the window
        acc["loss_sum"] = total_loss
        bad = D.any_flag(ctx, not math.isfinite(total_loss))
        if bad:
            seen = total_loss if not math.isfinite(total_loss) else "non-finite in another process"
            raise ConfigError(f"run {spec.run_id}: the loss became {seen} in one of the training "
                              f"steps {window.checked + 1}..{at} (checked every log_every="
                              f"{recipe.log_every} steps): lower the learning rate (recipe lr) or "
                              f"check the data")
        window.checked = at

    def at_sync_point(s: int) -> bool:
        return (s % recipe.log_every == 0 or s % recipe.eval_every == 0
                or s % recipe.checkpoint_every == 0 or s == total)

    net.train()
    t_log = time.perf_counter()
    with StopRequest() as stop:
        it = iter(train_loader)
        while step < total:
            x, y, m = next(it)
            t0 = time.perf_counter()
            x = _to(x, ctx.device, recipe.channels_last)
            y, m = _to(y, ctx.device), _to(m, ctx.device)
            with _autocast(recipe, ctx.device):
                out = net(x)
            loss = loss_fn(task.kind, out.float(), y, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr_used = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            step += 1
            session_steps += 1
            window.add(loss)  # on the device: no host sync per step (issue 18)
            acc["loss_n"] += 1
            acc["images"] += recipe.batch_size
            acc["time"] += time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            if step % recipe.log_every == 0 or step == total:
                check_loss(step)
                ips = acc["images"] / max(acc["time"], 1e-9)
                row = {"step": step, "kind": "train", "loss": acc["loss_sum"] / acc["loss_n"],
                       "lr": lr_used, "images_per_s": ips, "epoch": step / spe}
                mlog.append(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr_used:.2e}")
                elif main:
                    eta = (total - step) * (time.perf_counter() - t_log) / max(session_steps, 1)
                    log.info("step %d/%d loss %.4f lr %.3g %.1f img/s eta %.0fs", step, total,
                             row["loss"], lr_used, ips, eta)
                acc = {"loss_sum": 0.0, "loss_n": 0, "images": 0, "time": 0.0}
                window.reset()
            if step % recipe.eval_every == 0 or step == total:
                check_loss(step)
                last_eval = do_eval(step)
            if recipe.snapshot_every and step % recipe.snapshot_every == 0:
                check_loss(step)  # every process (a collective under DDP): no NaN snapshot
                save_snapshot(step)
            session_done = (max_steps_this_session is not None
                            and session_steps >= max_steps_this_session)
            want_stop = stop.signum is not None or session_done
            if ctx.distributed:  # agree on a signal at sync points only (each agreement syncs)
                want_stop = (D.any_flag(ctx, want_stop)
                             if session_done or at_sync_point(step) else False)
            want_stop = want_stop and step < total
            if step % recipe.checkpoint_every == 0 or want_stop:
                if step < total:
                    check_loss(step)
                    save_ckpt(step)
            if want_stop:
                stopped_by = (signal.Signals(stop.signum).name if stop.signum is not None
                              else "max_steps_this_session")
                break
    if bar is not None:
        bar.close()

    if stopped_by is not None:
        msg = (f"run {spec.run_id} stopped at step {step}/{total} ({stopped_by}); checkpoint saved "
               f"in {folder.training_state}. Rerun the same command to resume.")
        if main:
            log.warning(msg)
        return {"run_id": spec.run_id, "status": "interrupted", "step": step, "total_steps": total,
                "stopped_by": stopped_by, "message": msg}

    if last_eval is None or last_eval["step"] != total:
        last_eval = do_eval(total)
    evals = [r for r in mlog.rows() if r.get("kind") == "eval"] if main else []
    head = task.headline
    finite = [r for r in evals if isinstance(r.get(head), (int, float)) and not math.isnan(r[head])]
    best = max(finite, key=lambda r: r[head]) if finite else None
    metrics = {k: v for k, v in last_eval.items() if k not in ("step", "kind", "eval_s")}
    final = {"run_id": spec.run_id, "status": "finished", "steps": total, "task": task.name,
             "headline": head, head: metrics.get(head), "metrics": metrics,
             "best": {"value": best[head], "step": best["step"]} if best else None}
    if test_ds is not None:  # once, after the last step: a resumed run redoes it before final.json
        t0 = time.perf_counter()
        outputs: list = []
        final["test"] = {"split": spec.test_split, "size": len(test_ds),
                         **measure(shard_loader(test_ds), outputs),
                         "test_s": round(time.perf_counter() - t0, 3)}
        if main:
            save_test_outputs(folder.test_outputs, *outputs[0])
        if main:
            log.info("run %s test (%s): %s %.4f", spec.run_id, spec.test_split, head,
                     final["test"].get(head, math.nan))
    final["session_wall_s"] = round(time.perf_counter() - t_start, 3)
    if main:
        save_model_checkpoint(folder.model_final, model, spec.model,
                              {"run_id": spec.run_id, "step": total, "init": spec.init})
        mlog.write_csv()
        atomic_write_json(folder.final, final)
        log.info("run %s finished: %s %.4f -> %s", spec.run_id, head,
                 metrics.get(head, math.nan), folder.final)
    D.barrier(ctx)
    return final
