"""Gabor (paper Fig. 9 right): is conv1's benefit just the shape of its filters?

conv1 of the ResNet50 layout filled with a bank of synthetic Gabor filters (scaled to the
pretrained conv1's norm), the rest random; against conv1 transfused from the pretrained model
(the rest random) and all random.
"""
from __future__ import annotations

from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.speed import speed_report

TITLE = "Synthetic Gabor conv1 vs transfused conv1 vs random (paper Fig. 9, right)"
QUESTION = "Is the benefit of a pretrained conv1 just its Gabor-like filter shapes?"
WRITES = ("results.csv (one row per run), auc_vs_step.png, steps_to_threshold.png, "
          "conv1_gabor.png (the Gabor filters at init), report.md")


def plan(cfg, make) -> list:
    runs = []
    for s in cfg.seeds:
        runs.append(make(model=cfg.resnet, init="gabor", seed=s))
        runs.append(make(model=cfg.resnet, init="transfuse", upto="conv1", seed=s))
        runs.append(make(model=cfg.resnet, init="random", seed=s))
    return runs


def label(role: dict) -> str:
    return {"gabor": "gabor conv1", "transfuse": "transfused conv1", "random": "random"}[role["init"]]


ORDER = ["gabor conv1", "transfused conv1", "random"]


def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    from transfusion.experiments.layer_change import conv1_weights
    from transfusion.report import figures

    panels = {}
    for r in plan_doc["runs"]:
        if r["role"]["seed"] == plan_doc["config"]["seeds"][0] and r["role"]["init"] in ("gabor", "transfuse"):
            w = conv1_weights(Path(runs_dir) / r["run_id"], "step0")
            if w is not None:
                panels[f"{label(r['role'])} at step 0"] = w
    figs = []
    if panels:
        figures.filter_grids(panels, Path(out_dir) / "conv1_gabor.png",
                             title="conv1 at initialisation: Gabor bank vs transfused")
        figs = [("conv1 filters", "![conv1 at init](conv1_gabor.png)\n")]
    return speed_report(plan_doc, runs_dir, out_dir, label=label, order=ORDER, title=TITLE,
                        question=QUESTION, curve_title="Gabor vs transfused conv1 vs random: validation AUC vs step",
                        steps_title="Steps to the AUC threshold: Gabor, transfused conv1, random",
                        extra_sections=figs,
                        claims=lambda rows: claims.gabor(rows, "auc_vs_step.png"))
