"""The paper's figures as PNG files (matplotlib, Agg backend), drawn from plain data read from files.

Each function takes small Python structures (already read from results.csv or run folders by the
experiment's report code) and writes one PNG; none keeps state. Missing values (a run that never
reached the threshold, a single-class AUC) are drawn as gaps or marked, never as 0.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    from transfusion.utils import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    _plt().close(fig)
    return path


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def grouped_bars(groups: dict[str, dict[str, tuple[float, float]]], path, *, title: str,
                 ylabel: str, reference: dict[str, dict[str, float]] | None = None,
                 reference_label: str = "paper", ylim: tuple[float, float] | None = None) -> Path:
    """Bars per group (e.g. model) and series (e.g. init) with std error bars (Tab. 1-3, Fig. 2).

    ``reference`` (same keys) is drawn as black diamonds, e.g. the paper's numbers.
    """
    plt = _plt()
    names = list(groups)
    series = []
    for g in names:
        for s in groups[g]:
            if s not in series:
                series.append(s)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(names) * max(1, len(series)) / 2 + 2), 3.6))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(names))
    ref_drawn = False
    for i, s in enumerate(series):
        means = [groups[g].get(s, (math.nan, math.nan))[0] for g in names]
        stds = [groups[g].get(s, (math.nan, math.nan))[1] for g in names]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, [m if _finite(m) else 0 for m in means], width,
               yerr=[sd if _finite(sd) else 0 for sd in stds], capsize=3, label=s)
        for p, m in zip(pos, means):
            if not _finite(m):
                ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        if reference:
            for p, g in zip(pos, names):
                r = reference.get(g, {}).get(s)
                if _finite(r):
                    ax.plot([p], [r], "kD", ms=5, label=None if ref_drawn else reference_label)
                    ref_drawn = True
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ylim is None:  # zoom on the bars (AUCs near 1 differ in the second decimal)
        lows = [m - (sd if _finite(sd) else 0) for g in groups.values() for m, sd in g.values() if _finite(m)]
        if reference:
            lows += [r for g in reference.values() for r in g.values() if _finite(r)]
        if lows and min(lows) > 0.2:
            ylim = (max(0.0, min(lows) - 0.1), None)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def curves_with_bands(series: dict[str, list[tuple[list, list]]], path, *, title: str,
                      xlabel: str = "training step", ylabel: str = "AUC",
                      threshold: float | None = None) -> Path:
    """One line per series (mean over seeds) with a band (min..max over seeds) (Fig. 6, Fig. 9).

    ``series[label]`` is a list of (steps, values) per seed; seeds are aligned on their common steps.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, per_seed in series.items():
        per_seed = [(list(s), list(v)) for s, v in per_seed if len(s)]
        if not per_seed:
            continue
        common = sorted(set(per_seed[0][0]).intersection(*[set(s) for s, _ in per_seed[1:]]))
        if not common:
            continue
        mat = np.array([[dict(zip(s, v)).get(c, math.nan) for c in common] for s, v in per_seed],
                       dtype=float)
        mean = np.nanmean(mat, axis=0)
        line, = ax.plot(common, mean, marker="o", ms=3, label=f"{label} (n={len(per_seed)})")
        if len(per_seed) > 1:
            ax.fill_between(common, np.nanmin(mat, axis=0), np.nanmax(mat, axis=0),
                            color=line.get_color(), alpha=0.2)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def layer_curves(series: dict[str, tuple[list[str], list[float]]], path, *, title: str,
                 ylabel: str = "CCA(layer at init, layer at end)",
                 ylim: tuple[float | None, float | None] | None = (0, 1.05)) -> Path:
    """Per-layer similarity curves, one line per (model, init) (Fig. 3).

    Models differ in depth, so the x axis is the relative depth (0 = first stage, 1 = last); each
    point is labelled with its stage name when there are few.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, (layers, values) in series.items():
        n = len(layers)
        xs = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        ys = [v if _finite(v) else math.nan for v in values]
        ls = "--" if "random" in label else "-"
        line, = ax.plot(xs, ys, marker="o", ms=3, ls=ls, label=label)
        if n <= 6:
            for x, y, name in zip(xs, ys, layers):
                if _finite(y):
                    ax.annotate(name, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points",
                                color=line.get_color())
    ax.set_xlabel("relative depth (first stage = 0, last = 1)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def similarity_heatmap(values, rows: list[str], cols: list[str], path, *, title: str,
                       row_label: str = "model A", col_label: str = "model B",
                       value_label: str = "similarity") -> Path:
    """A cross-layer similarity map (``transfusion.ops.similarity_matrix``): rows x cols in [0, 1],
    each cell annotated with its value when the map is small enough to read."""
    plt = _plt()
    v = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(cols), 1.0 + 0.5 * len(rows)))
    im = ax.imshow(v, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    if v.size <= 100:
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                if math.isfinite(v[i, j]):
                    ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label=value_label, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def depth_panels(panels: dict[str, dict[str, tuple[list[str], list[list[float]]]]], path, *,
                 title: str, styles: dict[str, dict] | None = None, ncols: int = 2) -> Path:
    """Per-stage measures of one model against depth, one panel per measure (feature reuse).

    ``panels[panel title][series label] = (stage names, values per seed: [seed][stage])``; each
    series is a line (mean over seeds) with a band (min..max over seeds); ``styles[label]`` holds
    matplotlib line options (e.g. color, ls). Missing values are gaps.
    """
    plt = _plt()
    n = len(panels)
    cols = min(ncols, max(1, n))
    rows = math.ceil(n / cols) if n else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (panel, series) in zip(axes.flat, panels.items()):
        names: list[str] = []
        for label, (layers, per_seed) in series.items():
            if not per_seed or not layers:
                continue
            names = names if len(names) >= len(layers) else list(layers)
            mat = np.array([[v if _finite(v) else math.nan for v in seed] for seed in per_seed], dtype=float)
            xs = np.arange(len(layers))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN stage: a gap
                mean, lo, hi = np.nanmean(mat, 0), np.nanmin(mat, 0), np.nanmax(mat, 0)
            style = dict((styles or {}).get(label, {}))
            line, = ax.plot(xs, mean, marker="o", ms=3, label=f"{label} (n={len(per_seed)})", **style)
            if len(per_seed) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, fontsize=7)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def step_panels(panels: dict[str, dict[str, list[tuple[list, list]]]], path, *, title: str,
                styles: dict[str, dict] | None = None, ylabel: str = "CKA",
                xlabel: str = "training step", ylim: tuple[float, float] | None = (0, 1.05),
                ncols: int = 3) -> Path:
    """Measures against the training step, one panel per measure (similarity over time).

    ``panels[panel title][series label]`` is a list of (steps, values) per seed; each series is a
    line (mean over the seeds, on their common steps) with a band (min..max) when there are
    several seeds; ``styles[label]`` holds matplotlib line options (e.g. color, ls).
    """
    plt = _plt()
    n = len(panels)
    cols = min(ncols, max(1, n))
    rows = math.ceil(n / cols) if n else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, (panel, series) in zip(axes.flat, panels.items()):
        for label, per_seed in series.items():
            per_seed = [(list(s), list(v)) for s, v in per_seed if len(s)]
            if not per_seed:
                continue
            common = sorted(set(per_seed[0][0]).intersection(*[set(s) for s, _ in per_seed[1:]]))
            if not common:
                continue
            mat = np.array([[_nan(dict(zip(s, v)).get(c)) for c in common] for s, v in per_seed],
                           dtype=float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN step: a gap
                mean, lo, hi = np.nanmean(mat, 0), np.nanmin(mat, 0), np.nanmax(mat, 0)
            style = dict((styles or {}).get(label, {}))
            line, = ax.plot(common, mean, marker="o", ms=3, label=label, **style)
            if len(per_seed) > 1:
                ax.fill_between(common, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _nan(v) -> float:
    return float(v) if _finite(v) else math.nan


def filter_grids(panels: dict[str, "np.ndarray"], path, *, title: str, max_filters: int = 32) -> Path:
    """conv1 filters as image grids, one panel per (init, before/after) (Fig. 5).

    Each array is (out, in, k, k); RGB filters are shown in colour, others as their channel mean;
    each filter is scaled to [0, 1] on its own so its shape is visible.
    """
    plt = _plt()
    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax, (label, w) in zip(axes.flat, panels.items()):
        ax.imshow(_tile(np.asarray(w, dtype=float), max_filters), interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _tile(w: np.ndarray, max_filters: int) -> np.ndarray:
    w = w[:max_filters]
    out, cin, kh, kw = w.shape
    if cin == 3:
        imgs = w.transpose(0, 2, 3, 1)
    else:
        imgs = np.repeat(w.mean(axis=1)[..., None], 3, axis=-1)
    lo = imgs.reshape(out, -1).min(axis=1)[:, None, None, None]
    hi = imgs.reshape(out, -1).max(axis=1)[:, None, None, None]
    imgs = (imgs - lo) / np.maximum(hi - lo, 1e-12)
    ncol = math.ceil(math.sqrt(out))
    nrow = math.ceil(out / ncol)
    grid = np.ones((nrow * (kh + 1) + 1, ncol * (kw + 1) + 1, 3))
    for i in range(out):
        r, c = divmod(i, ncol)
        grid[1 + r * (kh + 1):1 + r * (kh + 1) + kh, 1 + c * (kw + 1):1 + c * (kw + 1) + kw] = imgs[i]
    return grid


def steps_bars(labels: list[str], values: list[tuple[float, float, int, int]], path, *, title: str,
               threshold: float, max_steps: int) -> Path:
    """Steps to reach the AUC threshold per setting (Fig. 8, Fig. 9 right).

    ``values[i]`` = (mean steps over the seeds that reached it, std, reached, total). A setting whose
    runs never reached the threshold is drawn as a hatched bar at ``max_steps`` marked '>max'.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(labels) + 2), 3.6))
    x = np.arange(len(labels))
    for i, (m, sd, reached, total) in enumerate(values):
        if reached == 0:
            ax.bar(x[i], max_steps, 0.6, color="lightgray", hatch="//", edgecolor="gray")
            ax.text(x[i], max_steps, f">{max_steps}\n(0/{total})", ha="center", va="bottom", fontsize=7)
        else:
            ax.bar(x[i], m, 0.6, yerr=sd, capsize=3, color="C0")
            ax.text(x[i], m, f"{m:.0f}\n({reached}/{total})", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels, rotation=20)
    ax.set_ylabel(f"steps to AUC {threshold:g}")
    ax.set_ylim(0, max_steps * 1.25)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
