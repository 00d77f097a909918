"""Forward hooks on a model's named stages that stream activations into CCA statistics.

Layer names are the model's ``stage_names`` (ResNet: conv1, block1..block4; Inception:
Conv2d_1a_3x3..Mixed_7c; CBR: cbr1..cbrN), reached through ``model.stage(name)``.

Activations become datapoints x neurons matrices, (n, a): a conv output (N, C, H, W) is
average-pooled to ``min(pool, H, W)`` squared positions (``DEFAULT_POOL`` = 4) and each position of
each image becomes one datapoint, (N * h * w, C), through ``transfusion.ops.conv_to_datapoints``;
a (N, C) output is used as it is. Pooling keeps the number of datapoints per image fixed, so two
models of different depth or input size can be compared on the same rows, and keeps the number of
datapoints a small multiple of the image count. Nothing keeps whole activation tensors: each
batch's datapoints go straight into the streaming statistics and are dropped.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from transfusion.errors import ConfigError

DEFAULT_POOL = 4


def to_datapoints(act, pool: int = DEFAULT_POOL) -> torch.Tensor:
    """(N, C, H, W) -> (N*h*w, C) pooled to at most pool x pool positions; (N, C) as it is."""
    from transfusion.ops import conv_to_datapoints

    if isinstance(act, (tuple, list)):  # e.g. Inception's (logits, aux) at the top; take the main one
        act = act[0]
    act = act.detach()
    if act.dim() == 4:
        side = max(1, min(pool, act.shape[-2], act.shape[-1]))  # never upsample a small map
        return conv_to_datapoints(act, pool=side, warn=False)
    if act.dim() == 2:
        return act
    return act.reshape(act.shape[0], -1)


def layer_key(prefix: str, stage: str) -> str:
    """The name under which a model's stage is stored in the statistics: '<prefix>/<stage>'."""
    return f"{prefix}/{stage}"


class StageRecorder:
    """Context manager: hooks on the named stages of one model, calling ``sink(key, datapoints)``.

    ``prefix`` tells models apart ('a', 'b', 'init', 'final', 'rand0', ...) so several models can feed
    one statistics object in one pass over the data.
    """

    def __init__(self, model: nn.Module, prefix: str, sink: Callable[[str, torch.Tensor], None], *,
                 stages: Iterable[str] | None = None, pool: int = DEFAULT_POOL):
        names = tuple(stages) if stages is not None else tuple(getattr(model, "stage_names", ()))
        if not names:
            raise ConfigError(f"model {type(model).__name__} has no stage_names: build it with "
                              f"transfusion.models.build_model so its layers are named")
        unknown = [s for s in names if s not in getattr(model, "stage_names", ())]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown} of {type(model).__name__}; its stages are "
                              f"{list(model.stage_names)}")
        self.model, self.prefix, self.sink, self.stages, self.pool = model, prefix, sink, names, pool
        self._handles: list = []

    def __enter__(self) -> "StageRecorder":
        for stage in self.stages:
            key = layer_key(self.prefix, stage)

            def hook(_module, _inputs, output, key=key):
                self.sink(key, to_datapoints(output, self.pool).float())

            self._handles.append(self.model.stage(stage).register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
