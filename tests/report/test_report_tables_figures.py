import math

import numpy as np

from transfusion.report import document, figures, tables


def test_csv_roundtrip_keeps_numbers_and_missing(tmp_path):
    rows = [{"model": "cbr_tiny", "seed": 0, "auc": 0.75, "steps": None},
            {"model": "cbr_small", "seed": 1, "auc": math.nan, "extra": "x"}]
    cols = tables.write_csv(tmp_path / "r.csv", rows)
    assert cols == ["model", "seed", "auc", "steps", "extra"]
    back = tables.read_csv(tmp_path / "r.csv")
    assert back[0] == {"model": "cbr_tiny", "seed": 0, "auc": 0.75, "steps": None, "extra": None}
    assert back[1]["auc"] is None  # NaN is written as an empty cell, never as 0


def test_mean_std_over_seeds_ignores_missing():
    assert tables.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0), 2)
    assert tables.mean_std([0.5]) == (0.5, 0.0, 1)
    m, sd, n = tables.mean_std([None, math.nan])
    assert n == 0 and math.isnan(m)
    g = tables.group_mean_std([{"m": "a", "v": 1.0}, {"m": "a", "v": 2.0}, {"m": "b", "v": None}],
                              ("m",), "v")
    assert g[("a",)][0] == 1.5 and g[("b",)][2] == 0


def test_paper_constants_match_paper_md():
    assert tables.PAPER_RETINA_AUC[("resnet50", "transfer")] == (96.7, 0.04)
    assert tables.PAPER_SMALL_DATA_AUC[("resnet50", "random")] == 92.2
    assert tables.PAPER_CHEXPERT_RESNET50["Edema"] == (88.34, 88.89)
    assert tables.PAPER_THRESHOLD == 0.91


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_every_figure_kind_writes_a_png(tmp_path):
    p = figures.grouped_bars({"cbr_tiny": {"random": (0.7, 0.02), "transfer": (0.8, 0.01)},
                              "resnet50": {"random": (math.nan, math.nan)}}, tmp_path / "bars.png",
                             title="t", ylabel="AUC", reference={"resnet50": {"random": 0.964}})
    assert _is_png(p)
    p = figures.curves_with_bands({"random": [([0, 10, 20], [0.5, 0.6, 0.7]), ([0, 10, 20], [0.5, 0.65, 0.72])],
                                   "transfer": [([0, 10, 20], [0.6, 0.8, 0.85])]},
                                  tmp_path / "curves.png", title="t", threshold=0.75)
    assert _is_png(p)
    p = figures.layer_curves({"cbr_tiny random": (["cbr1", "cbr2", "cbr3"], [0.9, 0.6, math.nan])},
                             tmp_path / "layers.png", title="t")
    assert _is_png(p)
    w = np.random.default_rng(0).normal(size=(16, 3, 5, 5))
    p = figures.filter_grids({"random before": w, "random after": w * 2, "gray": w[:, :1]},
                             tmp_path / "filters.png", title="t")
    assert _is_png(p)
    p = figures.steps_bars(["random", "upto conv1"], [(math.nan, math.nan, 0, 2), (120.0, 10.0, 2, 2)],
                           tmp_path / "steps.png", title="t", threshold=0.75, max_steps=300)
    assert _is_png(p)


def test_report_states_setup_and_embeds_figures(tmp_path):
    cfg = {"dataset": "retina", "data_dir": None, "preset": "demo", "image_size": 64, "steps": 300,
           "eval_every": 50, "seeds": [0, 1], "threshold": 0.75, "threshold_note": "demo level",
           "executor": "local"}
    setup = document.setup_section(cfg, data={"label policy": "grades"}, recipe={"optimizer": "adam"},
                                   pretrained={"cbr_tiny": "pretrained ON THE FLY on the SYNTHETIC source"})
    path = document.write_report(tmp_path, title="T", question="Q?", setup=setup,
                                 sections=[("Results", "| a |\n|---|\n| 1 |\n")],
                                 figures=[("AUC", "auc.png")], warnings=["synthetic data"])
    text = path.read_text()
    for needle in ("SYNTHETIC retina", "Seeds", "0, 1", "adam", "**pretrained ON THE FLY", "![AUC](auc.png)",
                   "Raghu", "threshold", "synthetic data"):
        assert needle in text, needle
