"""The paper's claims each experiment declares, tested from its results rows (issue 15).

Every criterion here is fixed in code before any run: what the effect is, how runs are paired
(by seed: paired seeds share initial random draws and data order; where an experiment spans
several models or inits, by (model or init, seed)), and the kind of claim (``greater``: the paper
says effect > 0; ``equivalent``: the paper says "comparable", judged against the fixed margin
``transfusion.report.findings.AUC_MARGIN``). The statistics and verdict rule are in
``transfusion.report.findings``. Convergence speed is measured by ``curve_mean`` (mean validation
AUC over the evaluations after step 0), which, unlike steps-to-threshold, is defined for every run.

Each experiment writes ``results/<experiment>/findings.csv`` and a Findings section in its report;
``write_index`` gathers them into ``results/findings.csv`` and ``results/findings.md``.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from transfusion.report import findings as F
from transfusion.report import tables


def _by(rows: list[dict], value: str, *keys: str) -> dict:
    """{(keys...): value} of the rows with a finite value."""
    out = {}
    for r in rows:
        v = r.get(value)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[tuple(r.get(k) for k in keys)] = float(v)
    return out


def _paired(a: dict, b: dict) -> tuple[list[float], list[float]]:
    common = sorted(set(a) & set(b), key=str)
    return [a[k] for k in common], [b[k] for k in common]


def _unavailable(experiment: str, claim: str, criterion: str, why: str, figure: str | None = None) -> dict:
    row = F.finding(experiment, claim, criterion, "greater", math.nan, -math.inf, math.inf, 0,
                    note=why, figure=figure)
    row["note"] = why  # no seeds-to-decide estimate without data
    return row


def paired_claim(experiment: str, claim: str, criterion: str, kind: str, a: dict, b: dict | None = None,
                 *, figure: str | None = None, need: str = "") -> dict:
    """A claim on per-unit values a (minus b), paired over their common keys."""
    if b is None:
        xs, ys = [a[k] for k in sorted(a, key=str)], None
    else:
        xs, ys = _paired(a, b)
    if len(xs) == 0:
        return _unavailable(experiment, claim, criterion, need or "no paired runs finished", figure)
    return F.paired_finding(experiment, claim, criterion, kind, xs, ys, figure=figure)


# ------------------------------------------------------------------------------- speed claims
def speed_values(rows: list[dict], recs: list, key: str) -> list[dict]:
    """rows + 'curve_mean' (mean validation AUC after step 0) per run."""
    from transfusion.experiments.common import curve

    out = []
    for r, rec in zip(rows, recs):
        steps, vals = curve(rec, key)
        out.append({**r, "curve_mean": F.curve_mean(steps, vals)})
    return out


def mean_var(rows: list[dict], figure: str) -> list[dict]:
    cm = _by(rows, "curve_mean", "setting", "model", "seed")
    mv = {k[1:]: v for k, v in cm.items() if k[0].endswith("mean_var")}
    rnd = {k[1:]: v for k, v in cm.items() if k[0].endswith("random")}
    return [paired_claim("mean-var", "Mean Var converges faster than random init",
                         "mean validation AUC over the curve (after step 0): Mean Var minus random, "
                         "paired by seed; greater than 0", "greater", mv, rnd, figure=figure)]


def weight_transfusion(rows: list[dict], cuts: tuple[str, ...], figure: str) -> list[dict]:
    cm = _by(rows, "curve_mean", "setting", "seed")
    seeds = sorted({k[1] for k in cm}, key=str)
    order = ["random"] + [f"upto {c}" for c in cuts]
    effect = {}
    for s in seeds:
        vals = [cm.get((name, s)) for name in order]
        if any(v is None for v in vals):
            continue
        gains = [b - a for a, b in zip(vals[:-1], vals[1:])]
        effect[(s,)] = gains[0] - max(gains[1:])
    return [paired_claim("weight-transfusion", "the biggest speed-up comes from transfusing conv1",
                         "speed gain of each cut = its curve-mean AUC minus the previous cut's "
                         "(random before conv1); conv1's gain minus the largest later gain, per seed; "
                         "greater than 0", "greater", effect, figure=figure,
                         need="needs every cut (no --upto) and the random runs")]


def slim(rows: list[dict], figure: str) -> list[dict]:
    cm = _by(rows, "curve_mean", "setting", "seed")
    get = lambda name: {k[1:]: v for k, v in cm.items() if k[0] == name}  # noqa: E731
    s, t, r = get("slim (pretrained to block2)"), get("transfer"), get("random")
    both = {k: min(s[k] - r[k], t[k] - r[k]) for k in set(s) & set(t) & set(r)}
    return [
        paired_claim("slim", "slim performs comparably to full transfer",
                     "mean validation AUC over the curve: slim minus transfer, paired by seed; within "
                     f"±{F.AUC_MARGIN}", "equivalent", s, t, figure=figure),
        paired_claim("slim", "slim and transfer both converge faster than random init",
                     "per seed, the smaller of (slim - random, transfer - random) in curve-mean AUC; "
                     "greater than 0", "greater", both, figure=figure),
    ]


def gabor(rows: list[dict], figure: str) -> list[dict]:
    cm = _by(rows, "curve_mean", "setting", "seed")
    g = {k[1:]: v for k, v in cm.items() if k[0] == "gabor conv1"}
    c = {k[1:]: v for k, v in cm.items() if k[0] == "transfused conv1"}
    return [paired_claim("gabor", "Gabor-initialised conv1 performs comparably to transfused conv1",
                         "mean validation AUC over the curve: Gabor conv1 minus transfused conv1, paired "
                         f"by seed; within ±{F.AUC_MARGIN}", "equivalent", g, c, figure=figure)]


# ------------------------------------------------------------------------------- files
def section(rows: list[dict]) -> tuple[str, str]:
    return ("Findings", F.markdown_section(rows))


def write(out_dir: Path, rows: list[dict]) -> Path:
    path = Path(out_dir) / "findings.csv"
    tables.write_csv(path, [F.check_row(r) for r in rows], columns=list(F.COLUMNS) + list(F.OPTIONAL))
    return path


def read(path: Path) -> list[dict]:
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {k: r.get(k, "") for k in F.COLUMNS}
            for k in ("effect", "ci_low", "ci_high"):
                row[k] = float(row[k]) if row[k] not in ("", None) else math.nan
            row["seeds"] = int(row["seeds"] or 0)
            for k in F.OPTIONAL:
                if r.get(k):
                    row[k] = r[k]
            out.append(row)
    return out


def write_index(results_dir: Path) -> tuple[Path, Path] | None:
    """results/findings.csv + findings.md from every results/<experiment>/findings.csv."""
    results_dir = Path(results_dir)
    rows, reports = [], {}
    per = defaultdict(list)
    for path in sorted(results_dir.glob("*/findings.csv")):
        for r in read(path):
            if r.get("figure"):
                r["figure"] = f"{path.parent.name}/{r['figure']}"
            per[r["experiment"]].append(r)
        reports[path.parent.name] = f"{path.parent.name}/report.md"
    for exp in sorted(per):
        rows += per[exp]
    reports = {r["experiment"]: reports.get(r["experiment"], f"{r['experiment']}/report.md") for r in rows}
    if not rows:
        return None
    return F.write_index(results_dir, rows, reports)


# ------------------------------------------------------------------------------- performance
def _size(model: str) -> int:
    from transfusion.models import build_model

    return sum(p.numel() for p in build_model(model, 2).parameters())


def _smallest_and_largest(models: list[str], present: set) -> tuple[str, str, dict] | None:
    """(smallest, largest, {model: parameter count}) of the models that have results, by
    parameter count; None with fewer than two."""
    names = [m for m in models if m in present]
    if len(names) < 2:
        return None
    sizes = {m: _size(m) for m in names}
    return min(names, key=sizes.get), max(names, key=sizes.get), sizes


def _bootstrap_claim(experiment: str, claim: str, criterion: str, kind: str, a: dict, b: dict,
                     labels, figure: str) -> dict:
    """A claim on AUC(a) - AUC(b) per paired unit, all on one shared test set: units and test
    images resampled together (``findings.paired_bootstrap_auc``). a, b: {unit: scores}."""
    import numpy as np

    keys = sorted(set(a) & set(b), key=str)
    sa, sb = np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys])
    effect, lo, hi, n = F.paired_bootstrap_auc(sa, sb, labels)
    d = F._auc_matrix(sa, np.asarray(labels, bool)) - F._auc_matrix(sb, np.asarray(labels, bool))
    sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
    return F.finding(experiment, claim, criterion, kind, effect, lo, hi, n, sd=sd, figure=figure)


def performance(rows: list[dict], models: list[str], figure: str, test_scores: dict | None = None,
                labels=None) -> list[dict]:
    """``test_scores`` {(init, model, seed): per-image scores on the shared test set} with its
    ``labels``: the transfer-vs-random interval then resamples (model, seed) pairs and test
    images together; without them it is the paired t interval over (model, seed)."""
    auc = _by(rows, "auc", "init", "model", "seed")
    tr = {k[1:]: v for k, v in auc.items() if k[0] == "transfer"}
    rd = {k[1:]: v for k, v in auc.items() if k[0] == "random"}
    base = ("final AUC on the held-out test set: transfer minus random, paired by (model, seed)")
    if test_scores and len(set(tr) & set(rd)) > 0:
        ts = {k[1:]: v for k, v in test_scores.items() if k[0] == "transfer"}
        rs = {k[1:]: v for k, v in test_scores.items() if k[0] == "random"}
        out = [_bootstrap_claim("performance", "transfer and random init reach comparable final AUC",
                                base + ", interval from a bootstrap over pairs and test images; "
                                f"within ±{F.AUC_MARGIN}", "equivalent", ts, rs, labels, figure)]
    else:
        out = [paired_claim("performance", "transfer and random init reach comparable final AUC",
                            base + f"; within ±{F.AUC_MARGIN}", "equivalent", tr, rd, figure=figure)]
    picked = _smallest_and_largest(models, {k[1] for k in auc})
    if picked is not None:
        small, large, sizes = picked
        a = {(k[0], k[2]): v for k, v in auc.items() if k[1] == small}
        b = {(k[0], k[2]): v for k, v in auc.items() if k[1] == large}
        out.append(paired_claim(
            "performance", "small models perform comparably to large ones",
            f"final AUC: {small} ({sizes[small] / 1e6:.2f}M parameters) minus {large} "
            f"({sizes[large] / 1e6:.2f}M), paired by (init, seed); within ±{F.AUC_MARGIN}",
            "equivalent", a, b, figure=figure))
    return out


# ------------------------------------------------------------------------------- layer change
def layer_change(rows: list[dict], models: list[str], figure: str) -> list[dict]:
    """rows: one per (run, layer) with model, init, seed, layer_index and svcca(step 0, final)."""
    per_run = defaultdict(dict)
    for r in rows:
        v = r.get("svcca")
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            per_run[(r["model"], r["init"], r["seed"])][int(r["layer_index"])] = float(v)
    lowest = {k: d[min(d)] for k, d in per_run.items() if d}
    highest = {k: d[max(d)] for k, d in per_run.items() if len(d) > 1}
    low_minus_top = {k: lowest[k] - highest[k] for k in highest if k[1] == "transfer"}
    out = [paired_claim("layer-change", "with transfer, the lowest layers change least in training",
                        "SVCCA(step 0, end) of the lowest layer minus that of the top layer, transfer "
                        "runs, paired by (model, seed); greater than 0", "greater", low_minus_top,
                        figure=figure)]
    picked = _smallest_and_largest(models, {k[0] for k in lowest})
    if picked is not None:
        small, large, sizes = picked
        a = {(k[1], k[2]): v for k, v in lowest.items() if k[0] == large}
        b = {(k[1], k[2]): v for k, v in lowest.items() if k[0] == small}
        out.append(paired_claim(
            "layer-change", "large models' lowest layers change less in training than small models'",
            f"SVCCA(step 0, end) of the lowest layer: {large} minus {small}, paired by (init, seed); "
            "greater than 0", "greater", a, b, figure=figure))
    return out


# ------------------------------------------------------------------------------- representations
def representations(rows: list[dict], models: list[str], figure: str) -> list[dict]:
    """rows: per (model, seed, pair, layer) with top_layer and svcca."""
    top = defaultdict(list)
    for r in rows:
        v = r.get("svcca")
        if r.get("top_layer") and isinstance(v, (int, float)) and math.isfinite(float(v)):
            top[(r["model"], r["seed"], r["pair"])].append(float(v))
    mean = {k: sum(v) / len(v) for k, v in top.items()}
    gap = {}
    for (m, s, p), v in mean.items():
        if p == "random vs random" and (m, s, "random vs transfer") in mean:
            gap[(m, s)] = v - mean[(m, s, "random vs transfer")]
    out = [paired_claim("representations", "CCA(random, transfer) is lower than CCA(random, random)",
                        "SVCCA of the top two layers: CCA(random, random) minus CCA(random, transfer), "
                        "paired by (model, seed); greater than 0", "greater", gap, figure=figure,
                        need="needs two random runs and a transfer run per seed")]
    picked = _smallest_and_largest(models, {k[0] for k in gap})
    if picked is not None:
        small, large, sizes = picked
        a = {(k[1],): v for k, v in gap.items() if k[0] == large}
        b = {(k[1],): v for k, v in gap.items() if k[0] == small}
        out.append(paired_claim(
            "representations", "the gap is larger for the large model",
            f"[CCA(rand, rand) - CCA(rand, transfer)] of {large} minus that of {small}, paired by "
            "seed; greater than 0", "greater", a, b, figure=figure))
    return out


# ------------------------------------------------------------------------------- feature reuse
def feature_reuse(rows: list[dict], models: list[str], figure: str) -> list[dict]:
    """rows: one per (run, layer) with model, init, seed, layer_index and weight_distance
    (||w_T - w_0|| / ||w_0|| of the stage's parameters between step 0 and the end)."""
    per_run = defaultdict(dict)
    for r in rows:
        v = r.get("weight_distance")
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            per_run[(r["model"], r["init"], r["seed"])][int(r["layer_index"])] = float(v)
    higher_minus_lowest = {}
    for (m, i, s), d in per_run.items():
        if i == "transfer" and len(d) > 1:
            low = min(d)
            higher = [v for li, v in d.items() if li != low]
            higher_minus_lowest[(m, s)] = sum(higher) / len(higher) - d[low]
    out = [paired_claim("feature-reuse", "feature reuse concentrates in the lowest layers",
                        "transfer runs: relative weight distance ||w_T - w_0|| / ||w_0|| (step 0 to "
                        "the end), mean over the stages above the lowest minus that of the lowest "
                        "stage, paired by (model, seed); greater than 0", "greater",
                        higher_minus_lowest, figure=figure,
                        need="needs finished transfer runs of a model with two or more stages")]
    out.append(_probe_claim(rows, figure))
    mean = {k: sum(d.values()) / len(d) for k, d in per_run.items() if d}
    picked = _smallest_and_largest(models, {k[0] for k in mean})
    if picked is not None:
        small, large, sizes = picked
        a = {(k[1], k[2]): v for k, v in mean.items() if k[0] == small}
        b = {(k[1], k[2]): v for k, v in mean.items() if k[0] == large}
        out.append(paired_claim(
            "feature-reuse", "large models move less than small ones",
            f"relative weight distance (step 0 to the end), mean over stages: {small} "
            f"({sizes[small] / 1e6:.2f}M parameters) minus {large} ({sizes[large] / 1e6:.2f}M), "
            "paired by (init, seed); greater than 0", "greater", a, b, figure=figure))
    return out


def _probe_claim(rows: list[dict], figure: str) -> dict:
    """Is the pretraining source worth transferring? The k-NN probe on the frozen step-0
    features (before any training on the medical task): transferred minus random weights."""
    per_run = defaultdict(list)
    for r in rows:
        v = r.get("knn_auc_step0")
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            per_run[(r["model"], r["init"], r["seed"])].append(float(v))
    mean = {k: sum(v) / len(v) for k, v in per_run.items() if v}
    tr = {(m, s): v for (m, i, s), v in mean.items() if i == "transfer"}
    rd = {(m, s): v for (m, i, s), v in mean.items() if i == "random"}
    return paired_claim("feature-reuse", "frozen pretrained features beat frozen random ones on "
                        "the medical task (the transfer source is worth transferring)",
                        "k-NN probe AUC on the frozen step-0 features, mean over stages: transfer "
                        "minus random init, paired by (model, seed); greater than 0", "greater",
                        tr, rd, figure=figure, need="needs finished random and transfer runs")
