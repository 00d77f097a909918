"""Feature reuse per stage: how far a stage's weights moved, what resetting it costs, and how
useful its features are to a k-NN probe (after Raghu et al. 2019, Figs. 3-5; stage resets as in
Zhang, Bengio and Singer 2019, "Are all layers created equal?"; weight distances as in Neyshabur
et al. 2020, "What is being transferred in transfer learning?").

For one run, between its model at step 0 and at the end (``runs/<run_id>/checkpoints/step0.pt``,
``model_final.pt``), per stage of ``model.stage_names``:

- ``weight_distance``: ||w_T - w_0|| / ||w_0|| over the stage's trainable parameters (its conv /
  linear weights and biases and its BatchNorm affine parameters, concatenated into one vector;
  BatchNorm running statistics are buffers and not counted);
- ``reinit_auc`` / ``reinit_fresh_auc``: the headline AUC of the final model with this stage alone
  reset (parameters and BatchNorm buffers: every ``stage_keys`` entry) to its step-0 values, or to
  a fresh random draw (the paper's random init from ``fresh_seed``); the drops are the final
  model's AUC on the same images minus these;
- ``knn_auc_step0`` / ``knn_auc_final``: a k-NN probe (``KNN_K`` neighbours, cosine similarity,
  unweighted vote) on the stage's globally average-pooled features, fitted on a fixed training
  subset and scored by the headline AUC on the fixed evaluation subset. The score of an image is
  the fraction of its neighbours that are positive: referable DR (grade >= 2) on retina; on
  CheXpert, per pathology over the neighbours whose label is not masked, then the mean AUC.

Everything runs in eval mode (BatchNorm uses its running statistics) under ``torch.no_grad``;
batches are streamed, only the pooled (n, channels) features are kept.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from transfusion.errors import CheckpointError

KNN_K = 10
KNN_METRIC = "cosine"


# ------------------------------------------------------------------------------- weights
def stage_parameter_keys(model: nn.Module, stage: str) -> list[str]:
    """The trainable parameters of a stage (no buffers), in state_dict order."""
    params = {name for name, _ in model.named_parameters()}
    return [k for k in model.stage_keys(stage) if k in params]


def weight_distance(state_0: dict, state_1: dict, keys: Iterable[str]) -> float:
    """||w_1 - w_0|| / ||w_0|| over ``keys`` of two state dicts (float64; NaN if ||w_0|| = 0)."""
    keys = list(keys)
    if not keys:
        return math.nan
    w0 = torch.cat([state_0[k].detach().double().flatten().cpu() for k in keys])
    w1 = torch.cat([state_1[k].detach().double().flatten().cpu() for k in keys])
    den = float(w0.norm())
    return float((w1 - w0).norm()) / den if den > 0 else math.nan


def same_architecture(model_a: nn.Module, model_b: nn.Module) -> bool:
    """Same model and the same stage keys and shapes (the heads may differ: a pretrained model and
    the model fine-tuned from it share an architecture up to the number of classes)."""
    if getattr(model_a, "model_name", None) != getattr(model_b, "model_name", None):
        return False
    if tuple(model_a.stage_names) != tuple(model_b.stage_names):
        return False
    sa, sb = model_a.state_dict(), model_b.state_dict()
    for stage in model_a.stage_names:
        ka, kb = model_a.stage_keys(stage), model_b.stage_keys(stage)
        if ka != kb or any(sa[k].shape != sb[k].shape for k in ka):
            return False
    return True


def stage_weight_distances(model_a: nn.Module, model_b: nn.Module) -> dict[str, float]:
    """{stage: ||w_b - w_a|| / ||w_a||} for two models of one architecture."""
    if not same_architecture(model_a, model_b):
        raise CheckpointError("weight distance needs two checkpoints of the same architecture "
                              "(same model, same stage shapes)")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    return {s: weight_distance(sa, sb, stage_parameter_keys(model_a, s)) for s in model_a.stage_names}


def reset_stage(model: nn.Module, source_state: dict, stage: str) -> None:
    """Copy every state_dict entry of ``stage`` (parameters and buffers) from ``source_state``."""
    own = model.state_dict()
    with torch.no_grad():
        for k in model.stage_keys(stage):
            own[k].copy_(source_state[k])


def fresh_state(model: nn.Module, seed: int) -> dict:
    """The state_dict of a fresh random draw (the paper's random init) of ``model``'s architecture."""
    from transfusion.initializers import initialize
    from transfusion.models import build_model

    name, state = model.model_name, model.state_dict()
    num_classes = int(state[model.head_prefix + ".weight"].shape[0])
    in_channels = int(state[model.first_conv_key].shape[1])
    with torch.random.fork_rng(devices=[]):  # build_model draws from the global RNG: leave it be
        fresh = build_model(name, num_classes, in_channels)
    initialize(fresh, "random", model_name=name, seed=seed)
    return fresh.state_dict()


# ------------------------------------------------------------------------------- forward passes
def forward_pass(model: nn.Module, batches: Iterable, *, device="cpu", stages: Iterable[str] = ()
                 ) -> dict:
    """One pass over (images, targets, masks) batches: logits, targets, masks and the globally
    average-pooled features {stage: (n, channels)} of the chosen stages (CPU, float32)."""
    stages = tuple(stages)
    feats: dict[str, list] = {s: [] for s in stages}
    handles = []
    for s in stages:
        def hook(_m, _i, out, s=s):
            out = out[0] if isinstance(out, (tuple, list)) else out
            out = out.detach().float()
            feats[s].append((out.mean(dim=(2, 3)) if out.dim() == 4 else out.reshape(out.shape[0], -1)).cpu())
        handles.append(model.stage(s).register_forward_hook(hook))
    was = model.training
    model.to(device).eval()
    logits, targets, masks = [], [], []
    try:
        with torch.no_grad():
            for x, y, m in batches:
                out = model(x.to(device))
                out = out[0] if isinstance(out, (tuple, list)) else out
                logits.append(out.float().cpu())
                targets.append(y.cpu())
                masks.append(m.float().cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if not logits:
        raise CheckpointError("no images were fed to the model; check the evaluation split is not empty")
    return {"logits": torch.cat(logits), "targets": torch.cat(targets), "masks": torch.cat(masks),
            "features": {s: torch.cat(v) for s, v in feats.items()}}


# ------------------------------------------------------------------------------- AUCs
def _quiet(fn, *args):
    from transfusion.train.metrics import MetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return fn(*args)


def headline_auc(kind: str, logits, targets, masks, label_names) -> float:
    """The run's headline AUC from logits: referable-DR AUC (retina) or the mean AUC (CheXpert)."""
    from transfusion.train import metrics as M

    if kind == "grade":
        return float(_quiet(M.retina_metrics, logits, targets)["auc_referable"])
    if kind == "multilabel":
        return float(_quiet(M.chexpert_metrics, logits, targets, masks, label_names)["auc_mean"])
    raise CheckpointError(f"feature reuse needs a retina (grade) or CheXpert (multilabel) task, not {kind!r}")


def _binary_targets(kind: str, targets, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, L) 0/1 targets and (n, L) masks of the headline target(s)."""
    from transfusion.train.metrics import REFERABLE_GRADE

    if kind == "grade":
        y = (targets.long() >= REFERABLE_GRADE).float()[:, None]
        return y, torch.ones_like(y)
    return targets.float(), (masks > 0).float()


def knn_auc(kind: str, train: dict, evaluation: dict, stage: str, *, k: int = KNN_K) -> float:
    """Headline AUC of a k-NN probe on one stage's pooled features (see the module docstring);
    ``train`` and ``evaluation`` are ``forward_pass`` results."""
    from transfusion.train.metrics import roc_auc

    a = torch.nn.functional.normalize(train["features"][stage].double(), dim=1)
    b = torch.nn.functional.normalize(evaluation["features"][stage].double(), dim=1)
    sim = b @ a.T  # (n_eval, n_train) cosine similarity
    ya, ma = _binary_targets(kind, train["targets"], train["masks"])
    yb, mb = _binary_targets(kind, evaluation["targets"], evaluation["masks"])
    aucs = []
    for j in range(ya.shape[1]):
        usable = ma[:, j] > 0
        keep = mb[:, j] > 0
        if int(usable.sum()) == 0 or not keep.any():
            aucs.append(math.nan)
            continue
        s = sim[:, usable]
        idx = s.topk(min(k, s.shape[1]), dim=1).indices
        score = ya[usable, j].double()[idx].mean(1)
        aucs.append(_quiet(roc_auc, score[keep], yb[keep, j]))
    finite = [x for x in aucs if math.isfinite(x)]
    return float(sum(finite) / len(finite)) if finite else math.nan


# ------------------------------------------------------------------------------- one run
def run_feature_reuse(step0: nn.Module, final: nn.Module, eval_batches: Callable[[], Iterable],
                      train_batches: Callable[[], Iterable], *, kind: str, label_names,
                      fresh_seed: int, k: int = KNN_K, device="cpu") -> list[dict]:
    """One row per stage of the run's model (see the module docstring). ``eval_batches`` and
    ``train_batches`` return a fresh iterator of (images, targets, masks) over a fixed subset."""
    stages = tuple(final.stage_names)
    s0, s1 = step0.state_dict(), {k_: v.clone() for k_, v in final.state_dict().items()}
    fresh = fresh_state(final, fresh_seed)
    ev1 = forward_pass(final, eval_batches(), device=device, stages=stages)
    tr1 = forward_pass(final, train_batches(), device=device, stages=stages)
    ev0 = forward_pass(step0, eval_batches(), device=device, stages=stages)
    tr0 = forward_pass(step0, train_batches(), device=device, stages=stages)
    args = (kind, ev1["targets"], ev1["masks"], label_names)
    auc = headline_auc(kind, ev1["logits"], *args[1:])
    rows = []
    for i, stage in enumerate(stages):
        reset = {}
        for label, source in (("reinit", s0), ("reinit_fresh", fresh)):
            final.load_state_dict(s1)
            reset_stage(final, source, stage)
            out = forward_pass(final, eval_batches(), device=device)
            reset[label] = headline_auc(kind, out["logits"], *args[1:])
        final.load_state_dict(s1)
        rows.append({
            "layer": stage, "layer_index": i,
            "weight_distance": weight_distance(s0, s1, stage_parameter_keys(final, stage)),
            "eval_auc": auc, "reinit_auc": reset["reinit"],
            "reinit_auc_drop": auc - reset["reinit"],
            "reinit_fresh_auc": reset["reinit_fresh"],
            "reinit_fresh_auc_drop": auc - reset["reinit_fresh"],
            "knn_auc_step0": knn_auc(kind, tr0, ev0, stage, k=k),
            "knn_auc_final": knn_auc(kind, tr1, ev1, stage, k=k),
            "n_eval": int(ev1["logits"].shape[0]), "n_train": int(tr1["logits"].shape[0])})
    return rows
