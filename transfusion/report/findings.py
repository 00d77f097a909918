"""Findings: each paper claim tested with a criterion fixed in code before the run.

A finding is one row of ``results/findings.csv``::

    experiment, claim, criterion, effect, ci_low, ci_high, seeds, verdict[, note, figure]

``effect`` is the measured difference the claim is about (e.g. transfer AUC minus random AUC),
``[ci_low, ci_high]`` its 95% interval, ``seeds`` the number of paired seeds, and ``verdict`` one of
``supported``, ``contradicted``, ``inconclusive`` by the rule of the claim's kind:

- ``greater`` (the paper says effect > 0): supported when the interval lies above 0, contradicted
  when it lies below 0, inconclusive otherwise;
- ``equivalent`` (the paper says "comparable"): supported when the interval lies inside
  (-margin, +margin), contradicted when it lies wholly outside, inconclusive otherwise.

Intervals: :func:`paired_t` (a t interval of the per-seed paired differences; every
experiment pairs runs by seed, and paired seeds share initial random draws and data order) and
:func:`paired_bootstrap_auc` (where one test set is shared by every run: seeds and images resampled
together, so the interval holds both the seed-to-seed and the test-set sampling variation).
:func:`delong` is DeLong's test of two correlated AUCs on one test set. An inconclusive verdict
carries a note with the number of seeds that would decide it, at the measured effect and spread.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from transfusion.report import tables

COLUMNS = ("experiment", "claim", "criterion", "effect", "ci_low", "ci_high", "seeds", "verdict")
OPTIONAL = ("note", "figure")
VERDICTS = ("supported", "contradicted", "inconclusive")
CONFIDENCE = 0.95
#: equivalence margin of the "comparable" claims, in AUC (final or mean-over-the-curve) units,
#: fixed before any run: the paper calls AUCs "comparable" when they differ by a few tenths of a
#: percentage point on real data; at the demo's scale (3 seeds, 2,400 test images, AUC standard
#: error ~0.007) 0.02 is the smallest margin a run can resolve.
AUC_MARGIN = 0.02


def _t_quantile(df: int, conf: float = CONFIDENCE) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + conf / 2, df))


def paired_t(a: Sequence[float], b: Sequence[float] | None = None, conf: float = CONFIDENCE
             ) -> tuple[float, float, float, int, float]:
    """(mean difference, ci_low, ci_high, n, sd) of a - b over paired seeds (b None: of a itself).

    With one pair the interval is (-inf, inf): one seed decides nothing.
    """
    a = np.asarray(a, dtype=np.float64)
    d = a - np.asarray(b, dtype=np.float64) if b is not None else a
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0, math.nan
    m = float(d.mean())
    if n == 1:
        return m, -math.inf, math.inf, 1, math.nan
    sd = float(d.std(ddof=1))
    half = _t_quantile(n - 1, conf) * sd / math.sqrt(n)
    return m, m - half, m + half, n, sd


def _auc_matrix(scores: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` (runs x images) for binary labels ``pos`` (rank formula)."""
    from scipy.stats import rankdata

    r = rankdata(scores, axis=1)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return (r[:, pos].sum(1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def paired_bootstrap_auc(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, *,
                         n_boot: int = 1000, seed: int = 0, conf: float = CONFIDENCE
                         ) -> tuple[float, float, float, int]:
    """(mean over seeds of AUC_a - AUC_b, ci_low, ci_high, n_seeds) on one shared test set.

    ``scores_a``/``scores_b``: (seeds, images), row i of both from the same seed. Each bootstrap
    draw resamples the seeds (pairs kept) and the images (the same images for every run), so the
    percentile interval holds both sources of variation.
    """
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    y = np.asarray(labels).astype(bool).ravel()
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != y.size:
        raise ValueError(f"paired_bootstrap_auc: scores {a.shape} and {b.shape} and {y.size} labels "
                         f"do not fit together")
    n_seeds, n_img = a.shape
    effect = float((_auc_matrix(a, y) - _auc_matrix(b, y)).mean())
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for k in range(n_boot):
        img = rng.integers(0, n_img, n_img)
        yy = y[img]
        if yy.all() or not yy.any():
            draws[k] = np.nan
            continue
        s = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, int)
        draws[k] = float((_auc_matrix(a[s][:, img], yy) - _auc_matrix(b[s][:, img], yy)).mean())
    draws = draws[np.isfinite(draws)]
    lo, hi = np.quantile(draws, [0.5 - conf / 2, 0.5 + conf / 2])
    return effect, float(lo), float(hi), n_seeds


def delong(scores_a, scores_b, labels) -> tuple[float, float, float]:
    """DeLong et al. (1988): (AUC_a - AUC_b, its standard error, two-sided p) on one test set."""
    from scipy.stats import norm

    a, b = np.asarray(scores_a, np.float64).ravel(), np.asarray(scores_b, np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    m, n = int(y.sum()), int((~y).sum())
    v10, v01, aucs = [], [], []
    for s in (a, b):
        pos, neg = s[y], s[~y]
        cmp = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs.append(cmp.mean())
        v10.append(cmp.mean(1))   # per positive
        v01.append(cmp.mean(0))   # per negative
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = float(aucs[0] - aucs[1])
    se = float(math.sqrt(max(var, 0.0)))
    p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else (0.0 if diff else 1.0)
    return diff, se, p


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley & McNeil 1982) from the AUC and the class counts."""
    if not (n_pos and n_neg) or not math.isfinite(auc):
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(math.sqrt(max(var, 0.0)))


def verdict(kind: str, ci_low: float, ci_high: float, margin: float = AUC_MARGIN) -> str:
    """The verdict rule (see the module docstring) for ``kind`` 'greater' or 'equivalent'."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    if kind == "greater":
        return "supported" if ci_low > 0 else "contradicted" if ci_high < 0 else "inconclusive"
    if kind == "equivalent":
        if -margin < ci_low and ci_high < margin:
            return "supported"
        return "contradicted" if ci_low >= margin or ci_high <= -margin else "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}: 'greater' or 'equivalent'")


def seeds_to_decide(kind: str, effect: float, sd: float, margin: float = AUC_MARGIN,
                    conf: float = CONFIDENCE, most: int = 200) -> int | None:
    """Paired seeds a t interval needs to decide the claim if the effect and spread stay as
    measured (None: not decidable within ``most`` seeds, e.g. an effect right at the bound)."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or sd == 0:
        return None
    room = abs(effect) if kind == "greater" else abs(margin - abs(effect))
    if room == 0:
        return None
    for n in range(2, most + 1):
        if _t_quantile(n - 1, conf) * sd / math.sqrt(n) < room:
            return n
    return None


def finding(experiment: str, claim: str, criterion: str, kind: str, effect: float, ci_low: float,
            ci_high: float, seeds: int, *, sd: float = math.nan, margin: float = AUC_MARGIN,
            note: str = "", figure: str | None = None) -> dict:
    """One findings row; an inconclusive verdict gets a note on the seeds that would decide it."""
    v = verdict(kind, ci_low, ci_high, margin)
    notes = [note] if note else []
    if v == "inconclusive" and seeds < 2:
        notes.append("one paired seed decides nothing: run at least 3 seeds (--seeds 0,1,2)")
    elif v == "inconclusive":
        n = seeds_to_decide(kind, effect, sd, margin)
        notes.append(f"about {n} paired seeds would decide it at this effect and spread" if n
                     else "not decidable by more seeds at this effect (it sits on the bound)")
    row = {"experiment": experiment, "claim": claim, "criterion": criterion,
           "effect": float(effect), "ci_low": float(ci_low), "ci_high": float(ci_high),
           "seeds": int(seeds), "verdict": v, "note": "; ".join(notes)}
    if figure:
        row["figure"] = figure
    return row


def paired_finding(experiment: str, claim: str, criterion: str, kind: str, a, b=None, *,
                   margin: float = AUC_MARGIN, note: str = "", figure: str | None = None) -> dict:
    """A finding from per-seed values: effect = mean(a - b) with its paired t interval."""
    m, lo, hi, n, sd = paired_t(a, b)
    return finding(experiment, claim, criterion, kind, m, lo, hi, n, sd=sd, margin=margin,
                   note=note, figure=figure)


def curve_mean(steps: Sequence[int], values: Sequence[float]) -> float:
    """Mean validation AUC over the evaluations after step 0 (the normalised area under the
    AUC-vs-step curve): the convergence-speed measure of the speed claims. Unlike the steps to a
    threshold it is defined for every run, also one that never reaches the threshold."""
    v = [float(x) for s, x in zip(steps, values) if s > 0 and math.isfinite(float(x))]
    return float(np.mean(v)) if v else math.nan


# ------------------------------------------------------------------------------- the files
def check_row(row: dict) -> dict:
    missing = [c for c in COLUMNS if c not in row]
    extra = sorted(set(row) - set(COLUMNS) - set(OPTIONAL))
    if missing or extra:
        raise ValueError(f"finding row has missing {missing} / unknown {extra} keys: {row}")
    if row["verdict"] not in VERDICTS:
        raise ValueError(f"finding verdict {row['verdict']!r} is not one of {VERDICTS}")
    return row


def markdown_section(rows: list[dict]) -> str:
    """The Findings section of a report.md: one table row per claim."""
    if not rows:
        return "No claim could be tested (no finished runs).\n"
    body = [[r["claim"], r["criterion"], _num(r["effect"]), f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]",
             str(r["seeds"]), f"**{r['verdict']}**", r.get("note", "")] for r in rows]
    return (tables.markdown_table(["claim", "criterion (fixed before the run)", "effect", "95% CI",
                                   "seeds", "verdict", "note"], body)
            + "\nVerdict rule: 'greater' claims are supported when the interval lies above 0; "
              f"'comparable' claims when it lies inside ±{AUC_MARGIN} (the equivalence margin). "
              "Definitions and tests: transfusion/report/findings.py.\n")


def _num(x) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):+.4f}"


def write_index(out: Path, rows: list[dict], reports: dict[str, str]) -> tuple[Path, Path]:
    """results/findings.csv (COLUMNS, then note and figure) and results/findings.md (one line per
    claim, linking the experiment's report and its key figure)."""
    out = Path(out)
    csv_path = out / "findings.csv"
    tables.write_csv(csv_path, [check_row(r) for r in rows], columns=list(COLUMNS) + list(OPTIONAL))
    lines = ["# Findings: the paper's claims, tested", "",
             f"{len(rows)} claims from {len({r['experiment'] for r in rows})} experiments "
             f"(table: [findings.csv](findings.csv)). Criteria and the verdict rule are fixed in "
             f"transfusion/report/findings.py; the paper's numbers are in the project's docs/paper.md.", ""]
    for r in rows:
        rep = reports.get(r["experiment"])
        link = f"[{r['experiment']}]({rep})" if rep else r["experiment"]
        fig = f", [figure]({r['figure']})" if r.get("figure") else ""
        lines.append(f"- **{r['verdict']}** — {link}: {r['claim']} (effect {_num(r['effect'])}, 95% CI "
                     f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}], {r['seeds']} seeds{fig})"
                     + (f" — {r['note']}" if r.get("note") else ""))
    md_path = out / "findings.md"
    from transfusion.utils import atomic_write_text

    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path
