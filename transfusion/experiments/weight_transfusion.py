"""Weight transfusion (paper Fig. 8): which pretrained layers matter for convergence speed?

The ResNet50-layout model with pretrained weights (and their BN) up to a cut — conv1, block1,
block2, block3 or block4 — and the rest random, plus the two ends: all random and full transfer.
Reports the steps each needs to reach the AUC threshold (0.91 on retina in the paper).
``--upto CUT`` runs that one cut only.
"""
from __future__ import annotations

from pathlib import Path

from transfusion.errors import ConfigError
from transfusion.experiments import claims
from transfusion.experiments.speed import speed_report

OPTIONS = ("upto",)
TITLE = "Weight transfusion: pretrained up to a cut, random above (paper Fig. 8)"
QUESTION = "Which layers' pretrained weights make training converge faster?"
WRITES = ("results.csv (one row per run: cut, final AUC, steps to threshold), steps_to_threshold.png "
          "(Fig. 8), auc_vs_step.png, report.md")
CUTS = ("conv1", "block1", "block2", "block3", "block4")


def plan(cfg, make) -> list:
    if cfg.upto is not None and cfg.upto not in CUTS:
        raise ConfigError(f"--upto {cfg.upto!r} is not a cut of {cfg.resnet}; choose one of "
                          f"{', '.join(CUTS)} (or leave --upto out to run them all)")
    runs = []
    for s in cfg.seeds:
        if cfg.upto is None:
            runs.append(make(model=cfg.resnet, init="random", seed=s))
        for cut in ([cfg.upto] if cfg.upto else CUTS):
            runs.append(make(model=cfg.resnet, init="transfuse", upto=cut, seed=s))
        if cfg.upto is None:
            runs.append(make(model=cfg.resnet, init="transfer", seed=s))
    return runs


def label(role: dict) -> str:
    if role["init"] == "transfuse":
        return f"upto {role['upto']}"
    return "random" if role["init"] == "random" else "transfer (all)"


ORDER = ["random"] + [f"upto {c}" for c in CUTS] + ["transfer (all)"]


def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    return speed_report(plan_doc, runs_dir, out_dir, label=label, order=ORDER, title=TITLE,
                        question=QUESTION, curve_title="Validation AUC vs step per transfusion cut",
                        steps_title="Steps to the AUC threshold per transfusion cut (Fig. 8)",
                        claims=lambda rows: claims.weight_transfusion(rows, CUTS, "steps_to_threshold.png"))
