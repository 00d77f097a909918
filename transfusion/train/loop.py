"""The step-based training loop: one :class:`~transfusion.train.spec.RunSpec` -> one run folder.

``run_training(spec, runs_dir)`` trains for the recipe's number of steps, evaluates every
``eval_every`` steps (and at step 0 and at the last step) on a fixed evaluation set, logs to
``metrics.jsonl`` + ``metrics.csv``, checkpoints every ``checkpoint_every`` steps and on
SIGINT/SIGTERM, and writes ``final.json`` at the end. A finished run is skipped; an interrupted one
resumes from ``checkpoints/last.pt`` and ends with the same metrics as an uninterrupted run
(same seed, CPU, deterministic kernels): the data order is a function of (seed, step), each
training item's augmentation is drawn from a seed given by its position in the data stream
(``data_stream.SeededItems``, so data-loading workers and DDP processes do not change it), and
the model, optimizer, scheduler and RNG states are restored (``checkpoint``).

This module holds the :class:`Trainer`, whose :meth:`Trainer.step` is one training step and
:meth:`Trainer.train` the loop around it; each other job has its module: ``data_stream`` (datasets,
sampler, seeded items, loaders), ``task`` (loss, metrics, forward under the recipe), ``evaluation``
(metrics on a set, BatchNorm recalibration), ``checkpoint`` (training state and resume),
``run_log`` (config.json, metrics.jsonl/csv, TensorBoard, final.json's record), ``stopping``
(signals, NaN/Inf checks without a per-step host sync, session limits; issue 18).

Run folder ``runs/<run_id>/`` (names in ``run_folder.RunFolder``): config.json (spec, resolved
recipe, schedule in steps, task, data description, environment), init_summary.json,
metrics.jsonl, metrics.csv, checkpoints/{step0.pt (model checkpoint, ``transfusion.checkpoints``
format), step<N>.pt (the same format, at every ``snapshot_every``-th step when the recipe asks for
snapshots; kept after the end), last.pt (training state, while the run is unfinished; kept after
the end only with keep_training_state)}, model_final.pt (model checkpoint), final.json,
tensorboard/ (event files with metrics.jsonl's numbers, when the tensorboard package is
installed) and .lock (the writer's pid: one process per run folder).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from transfusion.errors import ConfigError
from transfusion.run_lock import RunLock
from transfusion.train import distributed as D
from transfusion.train.checkpoint import (
    last_checkpoint,
    restore_training_state,
    save_model_checkpoint,
    save_training_state,
    seed_everything,
)
from transfusion.train.data_stream import (  # noqa: F401
    RunData,
    SeededItems,
    StepBatchSampler,
    load_run_data,
    shard_loader,
    train_loader,
)
from transfusion.train.evaluation import (
    evaluate,
    recalibrated_batchnorm,
    recalibration_loader,
    save_test_outputs,
)
from transfusion.train.recipes import Recipe, describe_schedule, get_recipe, lr_factor, steps_per_epoch
from transfusion.train.run_folder import RunFolder
from transfusion.train.run_log import MetricsLog, environment, final_record, record_session, write_config
from transfusion.train.stopping import LossWindow, StopRequest, check_finite
from transfusion.train.task import TaskInfo, autocast, compute_metrics, loss_fn, task_info, to_device  # noqa: F401
from transfusion.utils import atomic_write_json, remove_stale_temp_files
from transfusion.validation import check_model_input

log = logging.getLogger(__name__)


@dataclass
class Components:
    """What the loop gets from the models, initializers and data packages (tests pass small fakes)."""

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
        D.teardown(ctx, clean=sys.exc_info()[0] is None)


def _train(spec, run_dir: Path, ctx: D.DistContext, num_workers: int,
           max_steps_this_session: int | None, progress: bool | None, comps: Components,
           closing: contextlib.ExitStack) -> dict:
    """Set a run up (data, model, optimizer, config.json, resume or step 0), then train it."""
    t_start = time.perf_counter()
    recipe = get_recipe(spec.recipe_name, spec.recipe_overrides())
    if recipe.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = not recipe.deterministic
    check_model_input(spec.model, recipe.image_size, max(1, recipe.batch_size // ctx.world_size),
                      spec.in_channels, ctx.device)
    folder = RunFolder(run_dir)
    if ctx.is_main:
        folder.checkpoints.mkdir(parents=True, exist_ok=True)

    seed_everything(spec.seed)
    data = load_run_data(spec, recipe, comps.load_dataset, comps.ensure_synthetic)
    task = task_info(data.train, spec.task)
    spe = steps_per_epoch(len(data.train), recipe.batch_size)
    model, init_summary = _build_model(spec, recipe, comps, task, ctx)
    config = _config(spec, recipe, spe, task, data, ctx, num_workers)
    if ctx.is_main:
        write_config(folder, spec, config)
    opt, sched = _optimizer(model, recipe, spe)
    mlog = MetricsLog(run_dir, ctx.is_main)
    closing.callback(mlog.close)

    start, acc = 0, {"loss_sum": 0.0, "loss_n": 0, "images": 0, "time": 0.0}
    ck = last_checkpoint(run_dir)
    if ck is not None:
        start, acc = restore_training_state(ck, ctx, spec.run_id, model, opt, sched)
        mlog.start(resume_step=start)
        log.info("run %s: resuming from step %d of %d (%s)", spec.run_id, start, recipe.steps, ck)
    else:
        if ctx.is_main:
            atomic_write_json(folder.init_summary, init_summary)
            save_model_checkpoint(folder.step0, model, spec.model,
                                  {"run_id": spec.run_id, "step": 0, "init": spec.init})
        mlog.start(resume_step=None)  # drops what a run that died before its first checkpoint logged
        log.info("run %s: training %s (%s init) on %s for %d steps -> %s", spec.run_id,
                 spec.model, spec.init, spec.dataset, recipe.steps, run_dir)
    if ctx.is_main:
        record_session(folder, config["runtime"], start)

    trainer = Trainer(spec, recipe, ctx, task, folder, data, model, opt, sched, mlog, spe,
                      num_workers, start, acc)
    if start == 0:
        trainer.evaluate(0)
    stopped = trainer.train(max_steps_this_session, progress)
    if stopped is not None:
        return stopped
    return trainer.finish(t_start)


def _build_model(spec, recipe: Recipe, comps: Components, task: TaskInfo, ctx: D.DistContext):
    """The initialised model on the device (SyncBatchNorm, channels_last as the recipe says) and
    the initializer's summary."""
    model = comps.build_model(spec.model, num_classes=task.num_outputs, in_channels=spec.in_channels)
    init_summary = comps.initialize(model, spec.init, model_name=spec.model,
                                    checkpoint=spec.checkpoint, upto=spec.upto, seed=spec.seed)
    model.to(ctx.device)
    if recipe.sync_bn:
        model = D.use_sync_batchnorm(ctx, model)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, init_summary


def _optimizer(model, recipe: Recipe, spe: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe, spe))


def _config(spec, recipe: Recipe, spe: float, task: TaskInfo, data: RunData, ctx: D.DistContext,
            num_workers: int) -> dict:
    """config.json: what the run computes and where it ran first."""
    return {
        "run_id": spec.run_id, "spec": spec.to_dict(), "recipe": recipe.to_dict(),
        "schedule": describe_schedule(recipe, spe), "task": task.__dict__ | {"headline": task.headline},
        "data": data.describe(),
        # flat copies of what result tables need most
        "model": spec.model, "init": spec.init, "seed": spec.seed, "label_policy": spec.label_policy,
        "optimizer": recipe.optimizer, "lr": recipe.lr, "batch_size": recipe.batch_size,
        "image_size": recipe.image_size, "steps": recipe.steps,
        "runtime": {"device": str(ctx.device), "world_size": ctx.world_size,
                    "num_workers": num_workers},
        "environment": environment(),
    }


class Trainer:
    """One run's training from ``start``: :meth:`step` is one optimisation step, :meth:`train`
    the loop with its logging, evaluations, snapshots, checkpoints and stops, :meth:`finish` the
    last evaluation, the test split and final.json."""

    def __init__(self, spec, recipe: Recipe, ctx: D.DistContext, task: TaskInfo, folder: RunFolder,
                 data: RunData, model, opt, sched, mlog: MetricsLog, spe: float, num_workers: int,
                 start: int, acc: dict) -> None:
        self.spec, self.recipe, self.ctx, self.task, self.folder = spec, recipe, ctx, task, folder
        self.data, self.model, self.opt, self.sched, self.mlog = data, model, opt, sched, mlog
        self.spe, self.total, self.start, self.acc = spe, recipe.steps, start, acc
        self.main = ctx.is_main
        self.last_eval: dict | None = None
        self.window = LossWindow(ctx.device, acc["loss_sum"], start)
        self.net = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        pin = ctx.device.type == "cuda"
        sampler = StepBatchSampler(len(data.train), recipe.batch_size, spec.seed, start, self.total,
                                   ctx.rank, ctx.world_size)
        self.train_loader = train_loader(data.train, sampler, spec.seed, num_workers, pin)
        self.eval_loader_for = lambda ds: shard_loader(ds, ctx, recipe.eval_batch_size, spec.seed,
                                                    num_workers, pin)
        self.eval_loader = self.eval_loader_for(data.eval)
        self.recal_loader = (recalibration_loader(data.plain_train, recipe.bn_recalibration_images,
                                                  recipe.batch_size, spec.seed, num_workers, pin)
                             if data.plain_train is not None else None)

    # ------------------------------------------------------------------ the step
    def forward(self, model, x):
        with autocast(self.recipe, self.ctx.device):
            return model(to_device(x, self.ctx.device, self.recipe.channels_last))

    def step(self, x, y, m) -> float:
        """One optimisation step on a batch; returns the learning rate it used. The loss stays
        on the device (no host sync per step, issue 18)."""
        t0 = time.perf_counter()
        y, m = to_device(y, self.ctx.device), to_device(m, self.ctx.device)
        out = self.forward(self.net, x)
        loss = loss_fn(self.task.kind, out.float(), y, m)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        lr_used = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.window.add(loss)
        self.acc["loss_n"] += 1
        self.acc["images"] += self.recipe.batch_size
        self.acc["time"] += time.perf_counter() - t0
        return lr_used

    def train(self, max_steps_this_session: int | None, progress: bool | None) -> dict | None:
        """Train from ``start`` to the last step; returns the interrupted-status dict when it
        stopped early (a checkpoint saved), else None."""
        r, step, session_steps = self.recipe, self.start, 0
        bar = self._progress_bar(progress)
        self.net.train()
        t_log = time.perf_counter()
        with StopRequest() as stop:
            it = iter(self.train_loader)
            while step < self.total:
                lr_used = self.step(*next(it))
                step += 1
                session_steps += 1
                if bar is not None:
                    bar.update(1)
                if step % r.log_every == 0 or step == self.total:
                    self.train_row(step, lr_used, bar, (time.perf_counter() - t_log) / session_steps)
                if step % r.eval_every == 0 or step == self.total:
                    self.check_loss(step)
                    self.evaluate(step)
                if r.snapshot_every and step % r.snapshot_every == 0:
                    self.check_loss(step)  # every process (a collective under DDP): no NaN snapshot
                    self.save_snapshot(step)
                session_done = (max_steps_this_session is not None
                                and session_steps >= max_steps_this_session)
                want_stop = stop.should_stop(self.ctx, session_done, step, r, self.total)
                if (step % r.checkpoint_every == 0 or want_stop) and step < self.total:
                    self.check_loss(step)
                    self.save_checkpoint(step)
                if want_stop:
                    return self._interrupted(step, stop.reason(), bar)
        if bar is not None:
            bar.close()
        return None

    # ------------------------------------------------------------------ around the step
    def check_loss(self, at: int) -> None:
        """The one host sync of the loss: copy the window's sum into ``acc`` and stop on NaN/Inf
        (all processes together). Called at train rows, evaluations, checkpoints and the end."""
        if self.window.checked == at:
            return
        t0 = time.perf_counter()
        total_loss = self.window.value()
        self.acc["time"] += time.perf_counter() - t0  # on CUDA: the queued work of the window
        self.acc["loss_sum"] = total_loss
        check_finite(self.ctx, total_loss, self.spec.run_id, self.window.checked + 1, at,
                     self.recipe.log_every)
        self.window.checked = at

    def train_row(self, step: int, lr_used: float, bar, s_per_step: float) -> None:
        self.check_loss(step)
        acc = self.acc
        ips = acc["images"] / max(acc["time"], 1e-9)
        row = {"step": step, "kind": "train", "loss": acc["loss_sum"] / acc["loss_n"],
               "lr": lr_used, "images_per_s": ips, "epoch": step / self.spe}
        self.mlog.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr_used:.2e}")
        elif self.main:
            log.info("step %d/%d loss %.4f lr %.3g %.1f img/s eta %.0fs", step, self.total,
                     row["loss"], lr_used, ips, (self.total - step) * s_per_step)
        self.acc = {"loss_sum": 0.0, "loss_n": 0, "images": 0, "time": 0.0}
        self.window.reset()

    def measure(self, loader, keep: list | None = None) -> dict:
        """Metrics of the model on ``loader``'s set (BatchNorm recalibrated when the recipe asks);
        ``keep`` receives the gathered outputs."""
        D.broadcast_buffers(self.ctx, self.model)  # every shard evaluated with the model rank 0 saves
        with recalibrated_batchnorm(self.model, self.recal_loader, self.forward, self.ctx):
            return evaluate(self.model, loader, self.task, self.recipe, self.ctx, keep)

    def evaluate(self, step: int) -> dict:
        t0 = time.perf_counter()
        res = self.measure(self.eval_loader)
        row = {"step": step, "kind": "eval", **res, "eval_s": round(time.perf_counter() - t0, 3)}
        self.mlog.append(row)
        self.mlog.write_csv()
        if self.main:
            log.info("step %d/%d eval: %s %.4f, loss %.4f", step, self.total, self.task.headline,
                     res.get(self.task.headline, math.nan), res["eval_loss"])
        self.last_eval = row
        return row

    def save_checkpoint(self, step: int) -> None:
        save_training_state(self.folder.training_state, self.ctx, run_id=self.spec.run_id,
                            step=step, batch_size=self.recipe.batch_size, seed=self.spec.seed,
                            model=self.model, optimizer=self.opt, scheduler=self.sched,
                            acc=self.acc)

    def save_snapshot(self, step: int) -> None:
        """The model after ``step`` steps, in step0.pt's format (weights only: nothing of it is
        read on resume, so a redone step rewrites the same file, atomically, main process only)."""
        if self.main:
            save_model_checkpoint(self.folder.snapshot(step), self.model, self.spec.model,
                                  {"run_id": self.spec.run_id, "step": step, "init": self.spec.init,
                                   "snapshot_every": self.recipe.snapshot_every})

    def _progress_bar(self, progress: bool | None):
        if not (self.main and (progress if progress is not None else sys.stderr.isatty())):
            return None
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.start, unit="step", dynamic_ncols=True,
                    desc=self.spec.run_id)

    def _interrupted(self, step: int, stopped_by: str, bar) -> dict:
        if bar is not None:
            bar.close()
        msg = (f"run {self.spec.run_id} stopped at step {step}/{self.total} ({stopped_by}); "
               f"checkpoint saved in {self.folder.training_state}. Rerun the same command to resume.")
        if self.main:
            log.warning(msg)
        return {"run_id": self.spec.run_id, "status": "interrupted", "step": step,
                "total_steps": self.total, "stopped_by": stopped_by, "message": msg}

    # ------------------------------------------------------------------ the end
    def finish(self, t_start: float) -> dict:
        """The last evaluation (unless done at the last step), the test split once, the final
        model and final.json (written last: a run that died before it is redone from its
        checkpoint, test evaluation included)."""
        spec, head = self.spec, self.task.headline
        if self.last_eval is None or self.last_eval["step"] != self.total:
            self.evaluate(self.total)
        evals = [r for r in self.mlog.rows() if r.get("kind") == "eval"] if self.main else []
        final = final_record(spec, self.task, self.total, self.last_eval, evals)
        if self.data.test is not None:
            t0 = time.perf_counter()
            outputs: list = []
            final["test"] = {"split": spec.test_split, "size": len(self.data.test),
                             **self.measure(self.eval_loader_for(self.data.test), outputs),
                             "test_s": round(time.perf_counter() - t0, 3)}
            if self.main:
                save_test_outputs(self.folder.test_outputs, *outputs[0])
                log.info("run %s test (%s): %s %.4f", spec.run_id, spec.test_split, head,
                         final["test"].get(head, math.nan))
        final["session_wall_s"] = round(time.perf_counter() - t_start, 3)
        if self.main:
            save_model_checkpoint(self.folder.model_final, self.model, spec.model,
                                  {"run_id": spec.run_id, "step": self.total, "init": spec.init})
            self.mlog.write_csv()
            atomic_write_json(self.folder.final, final)
            log.info("run %s finished: %s %.4f -> %s", spec.run_id, head,
                     final["metrics"].get(head, math.nan), self.folder.final)
        D.barrier(self.ctx)
        return final
