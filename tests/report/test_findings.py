"""The findings statistics: verdicts on known effects, intervals, DeLong, the findings files."""
import csv
import math

import numpy as np
import pytest

from transfusion.report import findings as F


def test_known_effect_is_supported_and_inside_its_interval():
    rng = np.random.default_rng(0)
    a = 0.90 + rng.normal(0, 0.005, 5)
    b = a - 0.05 + rng.normal(0, 0.005, 5)
    row = F.paired_finding("x", "a > b", "mean(a - b) > 0", "greater", a, b)
    assert row["verdict"] == "supported"
    assert row["ci_low"] <= row["effect"] <= row["ci_high"]
    assert abs(row["effect"] - 0.05) < 0.01 and row["seeds"] == 5


def test_null_effect_is_inconclusive_for_greater_and_supported_for_equivalence():
    rng = np.random.default_rng(1)
    a = 0.9 + rng.normal(0, 0.003, 5)
    b = a + rng.normal(0, 0.003, 5)
    g = F.paired_finding("x", "a > b", "c", "greater", a, b)
    e = F.paired_finding("x", "a ~ b", "c", "equivalent", a, b, margin=0.02)
    assert g["verdict"] == "inconclusive" and "seeds" in g["note"]
    assert e["verdict"] == "supported"
    for r in (g, e):
        assert r["ci_low"] <= r["effect"] <= r["ci_high"]


def test_opposite_effect_is_contradicted():
    a = np.array([0.80, 0.81, 0.79, 0.80])
    b = a + 0.1 + np.array([0.0, 0.01, -0.01, 0.005])
    assert F.paired_finding("x", "a > b", "c", "greater", a, b)["verdict"] == "contradicted"
    assert F.paired_finding("x", "a ~ b", "c", "equivalent", a, b)["verdict"] == "contradicted"


def test_paired_t_matches_scipy():
    from scipy import stats

    d = np.array([0.1, 0.3, 0.2, 0.25])
    m, lo, hi, n, sd = F.paired_t(d)
    ref = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert n == 4 and math.isclose(lo, ref[0]) and math.isclose(hi, ref[1])
    _, lo1, hi1, n1, _ = F.paired_t([0.3])
    assert n1 == 1 and lo1 == -math.inf and hi1 == math.inf
    assert F.verdict("greater", lo1, hi1) == "inconclusive"


def test_delong_against_bootstrap_and_known_difference():
    rng = np.random.default_rng(2)
    y = rng.random(600) < 0.3
    good = y + rng.normal(0, 0.6, 600)
    bad = y + rng.normal(0, 1.5, 600)
    diff, se, p = F.delong(good, bad, y)
    assert diff > 0 and p < 0.01 and 0 < se < 0.05
    e, lo, hi, n = F.paired_bootstrap_auc(good[None], bad[None], y, n_boot=300)
    assert math.isclose(e, diff, rel_tol=1e-9) and lo <= e <= hi and n == 1
    assert abs((hi - lo) / 3.92 - se) < 0.5 * se  # bootstrap SE close to DeLong's
    d0, _, p0 = F.delong(good, good, y)
    assert d0 == 0 and p0 == 1.0


def test_hanley_mcneil_se():
    se = F.hanley_mcneil_se(0.9, 480, 1920)
    assert 0.005 < se < 0.01
    assert F.hanley_mcneil_se(0.9, 38, 174) > 0.02  # the old 212-image validation set


def test_findings_files_have_the_columns(tmp_path):
    rows = [F.paired_finding("performance", "transfer ~ random", "c", "equivalent",
                             [0.9, 0.91, 0.9], [0.9, 0.9, 0.91], figure="performance/auc.png"),
            F.paired_finding("gabor", "g > r", "c", "greater", [0.9, 0.92, 0.91], [0.8, 0.81, 0.8])]
    csv_path, md_path = F.write_index(tmp_path, rows, {"gabor": "gabor/report.md"})
    with open(csv_path) as f:
        read = list(csv.DictReader(f))
    assert list(read[0])[:8] == list(F.COLUMNS)
    assert [r["verdict"] for r in read] == [rows[0]["verdict"], "supported"]
    md = md_path.read_text()
    assert "(gabor/report.md)" in md and "(performance/auc.png)" in md
    with pytest.raises(ValueError):
        F.check_row({"experiment": "x"})
