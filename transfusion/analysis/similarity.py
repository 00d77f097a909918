"""Per-layer (SV)CCA and CKA between models, in one pass over a fixed evaluation set.

All models are fed the same batches, in the same order, with the same preprocessing; forward hooks
on every stage of every model stream pooled activations into one ``transfusion.ops.CCAStatistics``
(see ``transfusion.analysis.activations`` for the pooling), so a comparison of k models costs one
pass over the data and never holds whole activation tensors. Results are plain dicts
(``layer_a``, ``layer_b``, ``svcca``, ``cka``, ``n_datapoints``, ``neurons_a``, ``neurons_b``, ...)
that are written as JSON: ``runs/<run_id>/similarity.json`` for a run's step-0-vs-final comparison,
``results/<experiment>/similarity_*.json`` for comparisons between runs.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from transfusion.analysis.activations import DEFAULT_POOL, StageRecorder, layer_key
from transfusion.errors import CheckpointError
from transfusion.utils import atomic_write_json

log = logging.getLogger(__name__)

METHODS = ("svcca", "cka")


def eval_items(dataset, n_images: int, batch_size: int = 32):
    """The first ``n_images`` items of ``dataset`` (no shuffling) as batches as the dataset gives
    them, e.g. (images, targets, masks): a fixed set, with its labels."""
    n = min(n_images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n))
    yield from torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)


def eval_batches(dataset, n_images: int, batch_size: int = 32):
    """The images of ``eval_items``: the first ``n_images`` images of ``dataset``, a fixed set."""
    for batch in eval_items(dataset, n_images, batch_size):
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def collect_statistics(models: dict[str, nn.Module], batches: Iterable[torch.Tensor], *,
                       pool: int = DEFAULT_POOL, device: str | torch.device = "cpu",
                       stages: dict[str, Iterable[str]] | None = None, cross_layer: bool = False):
    """One pass: every stage of every model (keys '<name>/<stage>') into one CCAStatistics.

    Layers are grouped by stage name (the same stage of every model in one group), so any two
    models can be compared at any stage they share; memory is the sum over stages of
    (sum of that stage's widths over the models)^2 float64 values, independent of the image count.
    ``cross_layer=True`` puts every stage of every model in ONE group instead, so any stage can be
    compared with any other (the cross-layer map): memory (sum of all widths)^2 float64 values.
    Every stage is pooled to ``pool`` x ``pool`` positions per image, so all rows match.
    """
    from transfusion.ops import CCAStatistics

    chosen = {name: tuple((stages or {}).get(name) or model.stage_names) for name, model in models.items()}
    groups: dict[str, list[str]] = {}
    for name, names in chosen.items():
        for stage in names:
            groups.setdefault("all" if cross_layer else stage, []).append(layer_key(name, stage))
    stats = CCAStatistics(groups=groups)
    n_images = 0
    recorders = []
    for name, model in models.items():
        model.to(device).eval()
        recorders.append(StageRecorder(model, name, stats.update, pool=pool, stages=chosen[name]))
    for r in recorders:
        r.__enter__()
    try:
        distinct = list({id(m): m for m in models.values()}.values())  # a model named twice runs once
        with torch.no_grad():
            for x in batches:
                x = x.to(device)
                for model in distinct:
                    model(x)
                n_images += x.shape[0]
    finally:
        for r in recorders:
            r.__exit__(None, None, None)
    if n_images == 0:
        raise CheckpointError("no evaluation images were fed to the models; check the evaluation "
                              "split is not empty")
    stats.n_images = n_images
    return stats


def _value(result) -> float:
    return float(result.mean if hasattr(result, "mean") else result)


def pair_similarity(stats, key_a: str, key_b: str, methods: Iterable[str] = METHODS) -> dict:
    """(SV)CCA / CKA between two recorded layers, as a JSON-ready dict."""
    row = {"layer_a": key_a, "layer_b": key_b, "n_images": getattr(stats, "n_images", None),
           "neurons_a": None, "neurons_b": None}
    for m in methods:
        try:
            res = getattr(stats, m)(key_a, key_b)
            row[m] = _value(res)
            if m == "svcca":
                row["svcca_kept_dims"] = list(res.kept)
                row["n_datapoints"] = int(res.n)
            if m == "cka":
                row["neurons_a"], row["neurons_b"] = (int(k) for k in res.kept)
        except Exception as e:  # a degenerate layer (e.g. all-zero ReLU) is reported, not fatal
            log.warning("%s(%s, %s) failed: %s", m, key_a, key_b, e)
            row[m] = float("nan")
            row[f"{m}_error"] = str(e)
    return row


def cross_layer_map(model_a: nn.Module, model_b: nn.Module, batches, *, pool: int = DEFAULT_POOL,
                    device="cpu", method: str = "cka"):
    """Every stage of ``model_a`` against every stage of ``model_b`` (a SimilarityMatrix whose
    rows and columns are stage names), from one pass over ``batches``."""
    from transfusion.ops import similarity_matrix_from

    batches = list(batches)
    # every stage must give the same rows: pool all to the smallest stage map (never upsample)
    pool = max(1, min([pool] + [_smallest_map(m, batches[0][:1], device) for m in (model_a, model_b)]))
    stats = collect_statistics({"a": model_a, "b": model_b}, batches, pool=pool, device=device,
                               cross_layer=True)
    matrix = similarity_matrix_from(stats, [layer_key("a", s) for s in model_a.stage_names],
                                    [layer_key("b", s) for s in model_b.stage_names], method)
    matrix.rows, matrix.cols = list(model_a.stage_names), list(model_b.stage_names)
    return matrix


def _smallest_map(model: nn.Module, x: torch.Tensor, device) -> int:
    """The smallest spatial side of ``model``'s stage outputs for input ``x`` (a large number for a
    model whose stages are all flat)."""
    sides = []
    handles = [model.stage(s).register_forward_hook(
        lambda _m, _i, out: sides.append(min((out[0] if isinstance(out, (tuple, list)) else out).shape[-2:])
                                         if (out[0] if isinstance(out, (tuple, list)) else out).dim() == 4
                                         else 1))
        for s in model.stage_names]
    try:
        model.to(device).eval()
        with torch.no_grad():
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    return min(sides, default=1 << 30)


def compare_models(models: dict[str, nn.Module], pairs: list[tuple[str, str]], batches, *,
                   pool: int = DEFAULT_POOL, device="cpu", layers: Iterable[str] | None = None,
                   methods: Iterable[str] = METHODS) -> list[dict]:
    """Per-layer similarity for each pair of named models, all from one pass over ``batches``.

    ``layers``: stage names to compare (default: every stage the first model of each pair has and
    the second has too). One row per (pair, layer), with ``model_a``, ``model_b`` and ``layer``.
    """
    stats = collect_statistics(models, batches, pool=pool, device=device)
    methods = tuple(methods)
    rows = []
    for a, b in pairs:
        names_b = set(models[b].stage_names)
        chosen = [s for s in (layers or models[a].stage_names) if s in names_b]
        for stage in chosen:
            row = pair_similarity(stats, layer_key(a, stage), layer_key(b, stage), methods)
            rows.append({"model_a": a, "model_b": b, "layer": stage, **row})
    return rows


def load_checkpoint_model(path) -> tuple[nn.Module, dict]:
    """A model rebuilt from our own model checkpoint format ('transfusion-model'), plus its header
    (model_name, num_classes, in_channels, meta). Read by the one safe loader
    (``transfusion.initializers.load_model_checkpoint``), which also restores Inception-v3's
    ``transform_input`` from the file's meta."""
    from transfusion.initializers.checkpoint import load_model_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the step0.pt / model_final.pt "
                              f"of a run folder (runs/<run_id>/checkpoints/)")
    return load_model_checkpoint(path)


def init_vs_final(step0: Path, final: Path, batches, *, out: Path | None = None,
                  pool: int = DEFAULT_POOL, device="cpu") -> list[dict]:
    """Per-layer CCA between a model at step 0 and at the end (Fig. 3); written to ``out`` if given."""
    m0, _ = load_checkpoint_model(step0)
    m1, header = load_checkpoint_model(final)
    rows = compare_models({"init": m0, "final": m1}, [("init", "final")], batches, pool=pool,
                          device=device)
    if out is not None:
        atomic_write_json(out, {"kind": "init_vs_final", "step0": str(step0), "final": str(final),
                                "model_name": header.get("model_name"), "pool": pool, "rows": rows})
    return rows


def similarity_over_time(runs: dict[str, dict[int, Path]], batches, *, pool: int = DEFAULT_POOL,
                         device="cpu", across: tuple[str, str] | None = None) -> dict:
    """Per-stage CKA over training time, from model snapshots on disk.

    ``runs[label] = {step: model checkpoint}`` holds a run's step-0 model (key 0), its snapshots
    and its final model (the largest step = the end); ``batches()`` returns a fresh iterator over
    the fixed evaluation images. For every step ``t`` one pass over the images feeds each run's
    models at t, at step 0 and at the end (a model used twice runs once), giving
    ``cka_to_end`` = CKA(stage at t, stage at the end) and ``cka_to_step0`` = CKA(stage at t,
    stage at step 0); with ``across = (a, b)`` the same pass also gives CKA(a's stage at t,
    b's stage at t) at every step both runs have. Only the step-0 and end models stay loaded.

    Returns ``{"within": [{label, step, layer, layer_index, cka_to_end, cka_to_step0, n_images}],
    "across": [{step, layer, layer_index, cka, n_images}]}``.
    """
    if not runs or any(0 not in ck or len(ck) < 2 for ck in runs.values()):
        raise CheckpointError("similarity over time needs each run's step-0 model and its final "
                              "model (runs/<run_id>/checkpoints/step0.pt, model_final.pt)")
    ends = {lab: max(ck) for lab, ck in runs.items()}
    fixed = {lab: (load_checkpoint_model(ck[0])[0], load_checkpoint_model(ck[ends[lab]])[0])
             for lab, ck in runs.items()}
    within, cross = [], []
    for t in sorted(set().union(*runs.values())):
        models, pairs = {}, []
        for lab, ck in runs.items():
            if t not in ck:
                continue
            m0, m_end = fixed[lab]
            mt = m0 if t == 0 else m_end if t == ends[lab] else load_checkpoint_model(ck[t])[0]
            models.update({f"{lab}@t": mt, f"{lab}@0": m0, f"{lab}@end": m_end})
            pairs += [(f"{lab}@t", f"{lab}@end"), (f"{lab}@t", f"{lab}@0")]
        both = across is not None and all(f"{lab}@t" in models for lab in across)
        if both:
            pairs.append((f"{across[0]}@t", f"{across[1]}@t"))
        rows = compare_models(models, pairs, batches(), pool=pool, device=device, methods=("cka",))
        got = {(r["model_a"], r["model_b"], r["layer"]): r for r in rows}
        for lab in runs:
            if f"{lab}@t" not in models:
                continue
            for i, stage in enumerate(models[f"{lab}@t"].stage_names):
                to_end = got.get((f"{lab}@t", f"{lab}@end", stage))
                to_0 = got.get((f"{lab}@t", f"{lab}@0", stage))
                if to_end is None or to_0 is None:
                    continue
                within.append({"label": lab, "step": int(t), "layer": stage, "layer_index": i,
                               "cka_to_end": to_end["cka"], "cka_to_step0": to_0["cka"],
                               "n_images": to_end.get("n_images")})
        if both:
            a, b = across
            for i, stage in enumerate(models[f"{a}@t"].stage_names):
                r = got.get((f"{a}@t", f"{b}@t", stage))
                if r is not None:
                    cross.append({"step": int(t), "layer": stage, "layer_index": i, "cka": r["cka"],
                                  "n_images": r.get("n_images")})
    return {"within": within, "across": cross}
