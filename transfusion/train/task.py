"""What a run learns and how its model is run: the task of its dataset (kind, outputs, label
names), its loss and metrics, and the forward pass under the recipe (device, autocast, memory
format).

Used by the training step (:func:`loss_fn`, :func:`autocast`, :func:`to_device`) and by
evaluation (:func:`loss_fn` summed over the gathered shards, :func:`compute_metrics`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transfusion.errors import ConfigError
from transfusion.train import metrics as M


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


def autocast(recipe, device: torch.device):
    """bf16 autocast on ``device`` when the recipe's amp asks for it, else nothing."""
    if recipe.amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x, device, channels_last=False):
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
