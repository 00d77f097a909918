"""Mean Var (paper Fig. 6): is the benefit of transfer just the scale of the pretrained weights?

Trains random, Mean Var (every weight drawn i.i.d. from N(mean, var) of the pretrained tensor, BN
reset) and transfer initialisations for each seed, and plots validation AUC against the training step
with a band over seeds, plus the steps each needs to reach the threshold. By default on the
ResNet50-layout model of the preset (``--models`` to choose others).
"""
from __future__ import annotations

from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.speed import speed_report

TITLE = "Mean Var initialisation vs random and transfer (paper Fig. 6)"
QUESTION = "Is the benefit of transfer just the scale (mean and variance) of the pretrained weights?"
WRITES = ("results.csv (one row per run: setting, final AUC, steps to threshold), auc_vs_step.png "
          "(bands over seeds), steps_to_threshold.png, report.md")
INITS = ("random", "mean_var", "transfer")


def models(cfg) -> tuple[str, ...]:
    return cfg.models if cfg.models_given else (cfg.resnet,)


def plan(cfg, make) -> list:
    return [make(model=m, init=i, seed=s) for m in models(cfg) for i in INITS for s in cfg.seeds]



def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    ms = sorted({r["role"]["model"] for r in plan_doc["runs"]})
    label = (lambda role: role["init"]) if len(ms) == 1 else (lambda role: f"{role['model']} {role['init']}")
    order = [i if len(ms) == 1 else f"{m} {i}" for m in ms for i in INITS]
    return speed_report(plan_doc, runs_dir, out_dir, label=label, order=order, title=TITLE,
                        question=QUESTION, curve_title=f"{', '.join(ms)}: validation AUC vs step (Fig. 6)",
                        steps_title="Steps to the AUC threshold per initialisation",
                        claims=lambda rows: claims.mean_var(rows, "auc_vs_step.png"))
