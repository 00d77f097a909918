"""Evaluation: metrics on an evaluation set, and BatchNorm-stable evaluation.

:func:`evaluate` runs the model on this process's shard, gathers logits, targets and masks in
rank order and computes the mean loss and the task's metrics on the whole set (every process
gets the same numbers).

BatchNorm-stable evaluation (issue 15). A BatchNorm's running mean/var are an exponential average
over the last training batches, taken while the weights moved; evaluated with them, a model's
metrics wobble from one evaluation to the next. With the recipe's ``bn_recalibration_images = K``
(0: off) every evaluation first re-estimates them: every BatchNorm's buffers are reset and
accumulated as a cumulative average (``momentum=None``: each batch weighs the same) over K fixed
training images, without augmentation, in batches of the recipe's batch size, the BatchNorms in
training mode and every other module in eval mode (no dropout, no RNG drawn). The K images are the
first K of a permutation of the training split seeded by the run's seed: the same images at every
evaluation and after a resume. After the evaluation the training state's buffers, momenta and modes
are put back exactly, so the training (its numbers and its checkpoints) is what it would be
without.

Under DDP every process recalibrates on all K images and then takes rank 0's result (the same
numbers up to kernel order), so each evaluation shard sees the model rank 0 describes. With
sync_bn (SyncBatchNorm, CUDA only) the batch statistics are reduced over the processes, which all
hold the same batch: the means are the one-process means, the unbiased variance's n - 1 counts
world_size x batch images.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from torch.utils.data import DataLoader, Subset

from transfusion.train import distributed as D
from transfusion.train import metrics as M
from transfusion.train.task import TaskInfo, autocast, compute_metrics, loss_fn, to_device

log = logging.getLogger(__name__)

_BN = torch.nn.modules.batchnorm._BatchNorm


def save_test_outputs(path, logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor) -> None:
    """The test split's gathered outputs as npz (see ``RunFolder.test_outputs``), written atomically."""
    import io

    import numpy as np

    from transfusion.utils import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, logits=logits.float().numpy(), targets=targets.numpy(),
                        masks=masks.float().numpy())
    atomic_write_bytes(path, buf.getvalue())
_WARNED: set[str] = set()


@torch.no_grad()
def evaluate(model, loader, task: TaskInfo, recipe, ctx: D.DistContext, keep: list | None = None) -> dict:
    """Metrics (and the mean loss) on the evaluation set; shards gathered before any metric.
    ``keep``: a list that receives the gathered (logits, targets, masks)."""
    was = model.training
    model.eval()
    lg, tg, mk = [], [], []
    for x, y, m in loader:
        with autocast(recipe, ctx.device):
            out = model(to_device(x, ctx.device, recipe.channels_last))
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


def batchnorms(model: torch.nn.Module) -> list:
    """The BatchNorm modules (SyncBatchNorm included) that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def recalibration_loader(train_ds, n_images: int, batch_size: int, seed: int,
                         num_workers: int = 0, pin_memory: bool = False) -> DataLoader | None:
    """The fixed recalibration images: the first ``n_images`` of a permutation of the (unaugmented)
    training set seeded by ``seed`` (all of it when smaller); None when ``n_images`` is 0."""
    if n_images <= 0:
        return None
    order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed))
    items = [int(i) for i in order[:n_images]]
    return DataLoader(Subset(train_ds, items), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def recalibrated_batchnorm(model: torch.nn.Module, loader: DataLoader | None, forward,
                           ctx: D.DistContext):
    """Within the block, ``model``'s BatchNorms hold statistics re-estimated on ``loader``'s images
    (``forward(model, x)`` runs the model on one batch, autocast and memory format included) and
    the whole model is in eval mode; on leaving, the buffers, momenta and training flags are
    restored. Without a loader or without BatchNorms it does nothing."""
    bns = batchnorms(model)
    if loader is None or not bns:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    saved = [(bn, bn.momentum, {k: b.detach().clone() for k, b in bn.named_buffers(recurse=False)})
             for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for batch in loader:
                forward(model, batch[0])
        model.eval()
        D.broadcast_buffers(ctx, model)
        yield
    finally:
        for bn, momentum, buffers in saved:
            bn.momentum = momentum
            for k, b in bn.named_buffers(recurse=False):
                b.copy_(buffers[k])
        for m, mode in modes:
            m.training = mode
