"""Performance (paper Tables 1-3): does ImageNet-style transfer beat random initialisation?

Trains every model x {random, transfer} x seed and reports the validation AUC mean and std per cell; with
``--small-data N`` the training set is cut to N images (Table 3, N = 5000 in the paper).
"""
from __future__ import annotations

from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.common import (
    base_row,
    final_metric,
    headline_key,
    load_plan_runs,
    referable_test_scores,
    setup_text,
    standard_warnings,
)
from transfusion.report import document, figures, tables

#: the experiment-specific command-line options its `run` command offers (see experiments/cli.py)
OPTIONS = ("small_data",)
TITLE = "Performance: transfer vs random initialisation (paper Tables 1-3)"
QUESTION = "Does ImageNet transfer beat random initialisation on medical images?"
WRITES = ("results.csv (one row per run: model, init, seed, AUCs), auc.png (grouped bars with std "
          "error bars, paper numbers as diamonds), report.md")
INITS = ("random", "transfer")


def plan(cfg, make) -> list:
    return [make(model=m, init=i, seed=s, limit=cfg.small_data)
            for m in cfg.models for i in INITS for s in cfg.seeds]


def rows(plan_doc: dict, runs_dir: Path) -> list[dict]:
    cfg = plan_doc["config"]
    key = headline_key(cfg["dataset"])
    out = []
    for rec in load_plan_runs(plan_doc, runs_dir):
        row = base_row(rec, cfg, plan_doc["pretrained"])
        row["metric"] = key
        row["auc"] = final_metric(rec, key)
        # beside AUC: AUPRC (precision-recall, telling on rare positives) and calibration (ECE)
        row["auprc"] = final_metric(rec, key.replace("auc", "auprc", 1))
        row["ece"] = final_metric(rec, key.replace("auc", "ece", 1))
        for k in sorted(((rec.final or {}).get("metrics") or {}).keys()):
            if k.startswith(("auc", "kappa", "auprc", "ece")) and k != key:
                row[k] = final_metric(rec, k)
        out.append(row)
    return out


def _test_scores(plan_doc: dict, runs_dir: Path) -> tuple[dict, object]:
    """{(init, model, seed): referable scores} of the runs that kept their test outputs, and the
    shared labels; ({}, None) unless every run has them on one and the same test set."""
    import numpy as np

    scores, labels = {}, None
    for rec in load_plan_runs(plan_doc, runs_dir):
        got = referable_test_scores(rec) if rec.finished else None
        if got is None:
            return {}, None
        if labels is not None and not np.array_equal(labels, got[1]):
            return {}, None
        labels = got[1]
        scores[(rec.role["init"], rec.role["model"], rec.role["seed"])] = got[0]
    return scores, labels


def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    cfg = plan_doc["config"]
    rs = rows(plan_doc, runs_dir)
    tables.write_csv(out_dir / "results.csv", rs)
    stats = tables.group_mean_std(rs, ("model", "init"), "auc")
    small = cfg.get("small_data")
    groups = {m: {i: stats[(m, i)][:2] for i in INITS if (m, i) in stats} for m in cfg["models"]}
    paper = tables.PAPER_SMALL_DATA_AUC if small else {k: v[0] for k, v in tables.PAPER_RETINA_AUC.items()}
    reference = None
    if cfg["dataset"] == "retina":
        reference = {m: {i: paper[(m, i)] / 100 for i in INITS if (m, i) in paper} for m in cfg["models"]}
    split = "test" if rs and all(r["evaluated_on"].startswith("test") for r in rs) else "final"
    figures.grouped_bars(groups, out_dir / "auc.png", ylabel=f"{split} {headline_key(cfg['dataset'])}",
                         title=f"{cfg['dataset']} AUC, mean ± std over seeds"
                               + (f" (train limit {small})" if small else ""),
                         reference=reference, reference_label="paper (real retina)")
    auprc = tables.group_mean_std(rs, ("model", "init"), "auprc")
    ece = tables.group_mean_std(rs, ("model", "init"), "ece")
    head = ["model", "init", "ours: AUC mean ± std", "AUPRC", "ECE", "paper AUC (retina, %)"]
    body = []
    for m in cfg["models"]:
        for i in INITS:
            if (m, i) not in stats:
                continue
            p = paper.get((m, i)) if cfg["dataset"] == "retina" else None
            p_txt = ("n/a" if p is None else
                     (f"{p[0]} ± {p[1]}" if isinstance(p, tuple) else f"{p}"))
            body.append([m, i, tables.fmt_mean_std(*stats[(m, i)]),
                         tables.fmt_mean_std(*auprc[(m, i)]) if (m, i) in auprc else "n/a",
                         tables.fmt_mean_std(*ece[(m, i)]) if (m, i) in ece else "n/a", p_txt])
    scores, labels = _test_scores(plan_doc, runs_dir)
    found = claims.performance(rs, list(cfg["models"]), "auc.png", scores, labels)
    claims.write(out_dir, found)
    sections = [claims.section(found),
                ("Results" + (f" on {small} training images (Table 3)" if small else " (Tables 1, 2)"),
                 tables.markdown_table(head, body))]
    if cfg["dataset"] == "chexpert":
        head = (["pathology"] + [f"{m} {i}" for m in cfg["models"] for i in INITS]
                + ["paper ResNet50 % (random / transfer)"])
        body = []
        for lab, (r, t) in tables.PAPER_CHEXPERT_RESNET50.items():
            col = "auc_" + lab.lower().replace(" ", "_")
            cells = []
            for m in cfg["models"]:
                for i in INITS:
                    mean, sd, n = tables.mean_std([x.get(col) for x in rs if x["model"] == m and x["init"] == i])
                    cells.append(tables.fmt_mean_std(mean, sd, n))
            body.append([lab] + cells + [f"{r} / {t}"])
        sections.append(("Per pathology (CheXpert, Table 2)", tables.markdown_table(head, body)))
    return document.write_report(
        out_dir, title=TITLE, question=QUESTION, setup=setup_text(plan_doc, rs), sections=sections,
        figures=[(f"{split.capitalize()} AUC per model and initialisation (bars: mean over seeds, "
                  "whiskers: std)", "auc.png")], warnings=standard_warnings(plan_doc, rs))

