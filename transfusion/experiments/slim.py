"""Slim (paper Fig. 9 left): a cheaper hybrid of transfer and random.

ResNet50 pretrained up to block2 with block3 and block4 rebuilt at half the channels and random
(``resnet50_slim``, init 'slim'), against full transfer and random init of the ResNet50 layout.
"""
from __future__ import annotations

from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.speed import speed_report

TITLE = "Slim hybrid vs transfer vs random (paper Fig. 9, left)"
QUESTION = ("Does a model pretrained up to block2, with a half-width random top, keep the benefit of "
            "transfer?")
WRITES = ("results.csv (one row per run), auc_vs_step.png (Fig. 9 left), steps_to_threshold.png, "
          "report.md")


def plan(cfg, make) -> list:
    """The slim model (``cfg.slim``) against full transfer and random init of the model whose
    conv1..block2 it takes (resnet50_slim: ResNet50; the demo's resnet50_narrow_slim: the narrow one)."""
    from transfusion.models import SLIM_SOURCE

    source = SLIM_SOURCE[cfg.slim]
    runs = []
    for s in cfg.seeds:
        runs.append(make(model=cfg.slim, init="slim", seed=s, source_model=source))
        runs.append(make(model=source, init="transfer", seed=s))
        runs.append(make(model=source, init="random", seed=s))
    return runs


def label(role: dict) -> str:
    return {"slim": "slim (pretrained to block2)", "transfer": "transfer", "random": "random"}[role["init"]]


ORDER = ["slim (pretrained to block2)", "transfer", "random"]


def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    return speed_report(plan_doc, runs_dir, out_dir, label=label, order=ORDER, title=TITLE,
                        question=QUESTION, curve_title="Slim vs transfer vs random: validation AUC vs step",
                        steps_title="Steps to the AUC threshold: slim, transfer, random",
                        claims=lambda rows: claims.slim(rows, "auc_vs_step.png"))
