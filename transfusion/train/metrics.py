"""Evaluation metrics, implemented here (no scikit-learn at run time).

- :func:`roc_auc`: binary AUC-ROC by the rank-sum (Mann-Whitney) formula with average ranks for
  ties, which equals scikit-learn's ``roc_auc_score``; a single-class set gives NaN and a warning.
- :func:`quadratic_kappa`: Cohen's kappa with quadratic weights over a fixed set of classes.
- :func:`retina_metrics`, :func:`chexpert_metrics`, :func:`multiclass_metrics`: what a run logs.
- :func:`steps_to_threshold`: first (linearly interpolated) step at which a metric reaches a value.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from transfusion.data.catalogue import TASKS

REFERABLE_GRADE = 2
#: the headline metric of each task kind, from the catalogue's tasks (grade: auc_referable,
#: multilabel: auc_mean, multiclass: accuracy)
HEADLINE = {t.kind: t.headline for t in TASKS.values()}


class MetricWarning(UserWarning):
    """A metric could not be computed (e.g. a single-class evaluation set) and is reported NaN."""


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores, labels, *, name: str = "AUC") -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (0/1 or bool).

    Ties count one half (as scikit-learn's trapezoidal ROC). Returns NaN with a
    :class:`MetricWarning` when the labels hold one class only (no AUC exists), never 0.
    """
    s, y = _np(scores).ravel(), _np(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{name}: scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name}: scores contain NaN or inf (the model diverged?)")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name}: labels must be 0 or 1")
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        warnings.warn(f"{name}: the evaluation set has only {'positive' if n_neg == 0 else 'negative'}"
                      f" examples ({len(y)}); AUC is undefined and reported as NaN", MetricWarning,
                      stacklevel=2)
        return math.nan
    r = _average_ranks(s)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores, labels, *, name: str = "AUPRC") -> float:
    """Area under the precision-recall curve as average precision: sum over the distinct score
    thresholds (high to low) of (recall gain) x precision, which equals scikit-learn's
    ``average_precision_score`` (tied scores form one threshold). NaN with a warning when there is
    no positive (precision-recall is undefined), never 0."""
    s, y = _np(scores).ravel(), _np(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{name}: scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name}: scores contain NaN or inf (the model diverged?)")
    y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        warnings.warn(f"{name}: the evaluation set has no positive example ({len(y)}); AUPRC is "
                      f"undefined and reported as NaN", MetricWarning, stacklevel=2)
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_gain * precision))


#: equal-width probability bins of the expected calibration error (Guo et al. 2017 use 15)
ECE_BINS = 15


def expected_calibration_error(probs, labels, *, bins: int = ECE_BINS) -> float:
    """Binary expected calibration error: over ``bins`` equal-width bins of the predicted
    probability of the positive class, the size-weighted mean of |fraction positive - mean
    predicted probability|. 0 is perfectly calibrated; NaN for an empty set."""
    p, y = _np(probs).ravel().astype(np.float64), _np(labels).ravel().astype(np.float64)
    if p.shape != y.shape:
        raise ValueError(f"ECE: probabilities ({p.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if p.size == 0:
        return math.nan
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("ECE: probabilities must lie in [0, 1]")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / p.size)


def quadratic_kappa(y_true, y_pred, num_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights (i - j)^2 over classes 0..num_classes-1.

    Equals ``sklearn.metrics.cohen_kappa_score(y_true, y_pred, weights="quadratic",
    labels=range(num_classes))``. NaN with a warning when undefined (e.g. one class everywhere).
    """
    t = _np(y_true).astype(np.int64).ravel()
    p = _np(y_pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError("quadratic_kappa: y_true and y_pred differ in length")
    k = int(num_classes if num_classes is not None else max(t.max(initial=0), p.max(initial=0)) + 1)
    if t.size == 0 or t.min() < 0 or p.min() < 0 or t.max() >= k or p.max() >= k:
        raise ValueError(f"quadratic_kappa: labels must lie in 0..{k - 1} and not be empty")
    observed = np.zeros((k, k))
    np.add.at(observed, (t, p), 1.0)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i = np.arange(k)
    w = (i[:, None] - i[None, :]) ** 2.0
    denom = (w * expected).sum()
    if denom == 0:
        warnings.warn("quadratic kappa is undefined (a single class in both truth and prediction); "
                      "reported as NaN", MetricWarning, stacklevel=2)
        return math.nan
    return float(1.0 - (w * observed).sum() / denom)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nanmean(values: Iterable[float], what: str) -> float:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    return float(np.mean(vals))


def referable_scores(logits, referable_grade: int = REFERABLE_GRADE) -> np.ndarray:
    """Referable-DR score per image: the softmax mass on grades >= ``referable_grade``."""
    return _softmax(_np(logits))[:, referable_grade:].sum(1).clip(0.0, 1.0)


def retina_metrics(logits, grades, *, referable_grade: int = REFERABLE_GRADE) -> dict:
    """Grade logits (n, 5) and true grades (n,) -> auc_referable (headline), kappa, auc_macro_ovr.

    Referable-DR score = sum of the softmax over grades >= ``referable_grade``. ``auc_macro_ovr``
    is the mean of the one-vs-rest AUCs of the grades present with both classes (``ovr_classes``
    says how many).
    """
    lg, g = _np(logits), _np(grades).astype(np.int64).ravel()
    if lg.ndim != 2 or lg.shape[0] != g.shape[0]:
        raise ValueError(f"retina_metrics: logits {lg.shape} do not match grades {g.shape}")
    k = lg.shape[1]
    prob = _softmax(lg)
    referable = referable_scores(lg, referable_grade)
    out = {"auc_referable": roc_auc(referable, g >= referable_grade, name="referable-DR AUC"),
           "auprc_referable": average_precision(referable, g >= referable_grade,
                                                name="referable-DR AUPRC"),
           "ece_referable": expected_calibration_error(referable, g >= referable_grade)}
    pred = prob.argmax(1)
    out["kappa"] = quadratic_kappa(g, pred, k)
    out["accuracy"] = float((pred == g).mean())
    ovr = []
    for c in range(k):
        y = g == c
        if y.all() or not y.any():
            continue
        ovr.append(roc_auc(prob[:, c], y, name=f"grade-{c} AUC"))
    out["auc_macro_ovr"] = _nanmean(ovr, "one-vs-rest AUC")
    out["ovr_classes"] = len(ovr)
    out["n"] = int(g.shape[0])
    return out


def chexpert_metrics(logits, targets, masks, label_names: Sequence[str]) -> dict:
    """Per-pathology AUC (``auc_<label>``, label lower-cased, spaces -> _) over the examples whose
    mask is > 0, and their mean ``auc_mean`` over the labels with a defined AUC (``auc_labels``
    says how many; NaN if none)."""
    lg, t, m = _np(logits), _np(targets), _np(masks)
    if lg.shape != t.shape or t.shape != m.shape or lg.ndim != 2 or lg.shape[1] != len(label_names):
        raise ValueError(f"chexpert_metrics: logits {lg.shape}, targets {t.shape}, masks {m.shape} and "
                         f"{len(label_names)} label names do not fit together")
    out, aucs, auprcs, eces = {}, [], [], []
    for j, name in enumerate(label_names):
        keep = m[:, j] > 0
        slug = name.lower().replace(" ", "_")
        key = "auc_" + slug
        out[key] = roc_auc(lg[keep, j], t[keep, j], name=f"{name} AUC") if keep.any() else math.nan
        if keep.any():
            prob = 1.0 / (1.0 + np.exp(-lg[keep, j].astype(np.float64)))
            out["auprc_" + slug] = average_precision(lg[keep, j], t[keep, j], name=f"{name} AUPRC")
            out["ece_" + slug] = expected_calibration_error(prob, t[keep, j])
        else:
            out["auprc_" + slug] = out["ece_" + slug] = math.nan
        auprcs.append(out["auprc_" + slug])
        eces.append(out["ece_" + slug])
        if not keep.any():
            warnings.warn(f"{name} AUC: every label is masked in the evaluation set; reported as NaN",
                          MetricWarning, stacklevel=2)
        out[f"n_{name.lower().replace(' ', '_')}"] = int(keep.sum())
        aucs.append(out[key])
    out["auc_mean"] = _nanmean(aucs, "AUC")
    out["auprc_mean"] = _nanmean(auprcs, "AUPRC")
    out["ece_mean"] = _nanmean(eces, "ECE")
    out["auc_labels"] = sum(1 for a in aucs if not math.isnan(a))
    out["n"] = int(lg.shape[0])
    return out


def multiclass_metrics(logits, targets) -> dict:
    """Top-1 and top-5 accuracy (the pretraining source)."""
    lg, t = _np(logits), _np(targets).astype(np.int64).ravel()
    top = np.argsort(-lg, axis=1)[:, :5]
    return {"accuracy": float((top[:, 0] == t).mean()),
            "top5_accuracy": float((top == t[:, None]).any(1).mean()), "n": int(t.shape[0])}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (a line cut by an interrupted write is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def steps_to_threshold(source, key: str, threshold: float) -> float | None:
    """First step at which metric ``key`` reaches ``threshold``, linearly interpolated between the
    two evaluations around the crossing; None if it never does.

    ``source``: a metrics.jsonl path or a list of records (only those with a finite ``key`` and a
    ``step`` are used). If the first evaluation already reaches it, its step is returned.
    """
    rows = read_metrics(source) if isinstance(source, (str, os.PathLike)) else list(source)
    pts = sorted((float(r["step"]), float(r[key])) for r in rows
                 if r.get("step") is not None and isinstance(r.get(key), (int, float))
                 and not math.isnan(float(r[key])))
    prev = None
    for s, v in pts:
        if v >= threshold:
            if prev is None or v == prev[1]:
                return s
            s0, v0 = prev
            return s0 + (threshold - v0) / (v - v0) * (s - s0)
        prev = (s, v)
    return None
