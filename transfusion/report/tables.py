"""Result tables: CSV in and out, mean and std over seeds, Markdown tables, and the paper's numbers.

The paper's numbers are constants here, with their source named (``PAPER_SOURCE``); they are what a
full run on real data is compared with and are printed beside ours in every report.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict

from transfusion.utils import atomic_write_text

PAPER_SOURCE = ("Raghu, Zhang, Kleinberg, Bengio, 'Transfusion: Understanding Transfer Learning for "
                "Medical Imaging', NeurIPS 2019 (arXiv 1902.07208), as transcribed in docs/paper.md of the "
                "transfusion repository")

# RETINA AUC %, mean +- std over 3 runs (paper Table 1).
PAPER_RETINA_AUC = {
    ("resnet50", "random"): (96.4, 0.05), ("resnet50", "transfer"): (96.7, 0.04),
    ("inception_v3", "random"): (96.6, 0.13), ("inception_v3", "transfer"): (96.7, 0.05),
    ("cbr_larget", "random"): (96.2, 0.04), ("cbr_larget", "transfer"): (96.2, 0.04),
}
# Small data (5,000 retina images), AUC % (paper Table 3; stds not transcribed).
PAPER_SMALL_DATA_AUC = {
    ("resnet50", "random"): 92.2, ("resnet50", "transfer"): 94.6,
    ("cbr_larget", "random"): 93.6, ("cbr_larget", "transfer"): 93.9,
    ("cbr_largew", "random"): 93.6, ("cbr_largew", "transfer"): 93.7,
}
# CheXpert ResNet50 AUC % per pathology, (random, transfer) (paper Table 2).
PAPER_CHEXPERT_RESNET50 = {
    "Atelectasis": (79.52, 79.76), "Cardiomegaly": (75.23, 74.93), "Consolidation": (85.49, 84.42),
    "Edema": (88.34, 88.89), "Pleural Effusion": (88.70, 88.07),
}
# Fig. 2, higher layers: (CCA(rand, transfer), CCA(rand, rand)), read off the figure ("about").
PAPER_FIG2_CCA = {
    "resnet50": (0.24, 0.27), "inception_v3": (0.22, 0.25),
    "cbr_larget": (0.365, 0.365), "cbr_largew": (0.365, 0.365), "cbr_small": (0.365, 0.365),
    "cbr_tiny": (0.365, 0.365),
}
PAPER_FIG2_NOTE = "the CBRs: 'about 0.36-0.37 for both' (no per-model numbers)"
PAPER_THRESHOLD = 0.91
PAPER_SPEED_NOTE = ("retina: transfer reaches about 0.95 AUC in about 10k steps, random init needs "
                    "about 100k (Fig. 6)")


def write_csv(path, rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """Write rows (dicts) as CSV with a stable column order; returns the columns written."""
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())
    return columns


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    return v


def read_csv(path) -> list[dict]:
    """Rows of a results.csv, numbers converted back to float/int where they look like numbers."""
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(v: str):
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values; NaN mean when none."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return math.nan, math.nan, 0
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd, len(xs)


def group_mean_std(rows: list[dict], keys: tuple[str, ...], value: str) -> dict[tuple, tuple]:
    """{key tuple: (mean, std, n)} of ``value`` over the rows sharing ``keys`` (e.g. over seeds)."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r.get(value))
    return {k: mean_std(v) for k, v in groups.items()}


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fmt_mean_std(m: float, sd: float, n: int, scale: float = 1.0, digits: int = 3) -> str:
    if n == 0 or math.isnan(m):
        return "n/a (no finite value)"
    return f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f} (n={n})"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |")
    return "\n".join(lines) + "\n"
