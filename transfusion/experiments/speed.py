"""Shared aggregation of the convergence-speed experiments (mean-var, weight-transfusion, slim, gabor).

Each run is labelled by its setting (e.g. 'random', 'mean_var', 'transfer', 'upto block2'); the
report is the AUC-vs-step curve per setting with a band over seeds (from metrics.jsonl), the steps
to reach the threshold per setting (first evaluated step at or above it; runs that never reach it
are counted, not given a number), and the final AUC.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transfusion.experiments.claims import section as claims_section
from transfusion.experiments.claims import speed_values
from transfusion.experiments.claims import write as write_claims
from transfusion.experiments.common import (
    base_row,
    curve,
    final_metric,
    headline_key,
    load_plan_runs,
    setup_text,
    standard_warnings,
    steps_to,
)
from transfusion.report import document, figures, tables


def speed_rows(plan_doc: dict, runs_dir: Path, label: Callable[[dict], str]) -> tuple[list, list]:
    """(rows for results.csv, run records) with auc, steps_to_threshold, reached, label."""
    cfg = plan_doc["config"]
    key = headline_key(cfg["dataset"])
    recs = load_plan_runs(plan_doc, runs_dir)
    out = []
    for rec in recs:
        row = base_row(rec, cfg, plan_doc["pretrained"])
        st = steps_to(rec, key, cfg["threshold"])
        row.update({"setting": label(rec.role), "metric": key, "auc": final_metric(rec, key),
                    "threshold": cfg["threshold"], "steps_to_threshold": st,
                    "reached_threshold": st is not None,
                    "best_auc": max(curve(rec, key)[1], default=None)})
        out.append(row)
    return out, recs


def speed_report(plan_doc: dict, runs_dir: Path, out_dir: Path, *, label: Callable[[dict], str],
                 order: list[str], title: str, question: str, curve_title: str, steps_title: str,
                 curve_file: str = "auc_vs_step.png", steps_file: str = "steps_to_threshold.png",
                 extra_sections: list | None = None,
                 claims: Callable[[list[dict]], list[dict]] | None = None) -> Path:
    """The speed report; ``claims(rows)`` (rows with 'curve_mean') gives the experiment's findings
    (transfusion.experiments.claims), written to findings.csv and a Findings section."""
    cfg = plan_doc["config"]
    key = headline_key(cfg["dataset"])
    rs, recs = speed_rows(plan_doc, runs_dir, label)
    rs = speed_values(rs, recs, key)
    tables.write_csv(out_dir / "results.csv", rs)
    settings = [s for s in order if any(r["setting"] == s for r in rs)]
    series = {s: [curve(rec, key) for rec, r in zip(recs, rs) if r["setting"] == s] for s in settings}
    figures.curves_with_bands(series, out_dir / curve_file, title=curve_title,
                              ylabel=f"validation {key}", threshold=cfg["threshold"])
    step_vals, body = [], []
    for s in settings:
        mine = [r for r in rs if r["setting"] == s]
        reached = [r["steps_to_threshold"] for r in mine if r["steps_to_threshold"] is not None]
        m, sd, n = tables.mean_std(reached)
        step_vals.append((m, sd, n, len(mine)))
        auc = tables.mean_std([r["auc"] for r in mine])
        body.append([s, tables.fmt_mean_std(*auc),
                     f"{m:.0f} ± {sd:.0f}" if n else f"not reached (> {cfg['steps']})",
                     f"{n}/{len(mine)}"])
    figures.steps_bars(settings, step_vals, out_dir / steps_file, title=steps_title,
                       threshold=cfg["threshold"], max_steps=cfg["steps"])
    head = ["setting", f"final {key} (mean ± std)", f"steps to {cfg['threshold']:g}", "seeds reaching it"]
    sections = [("Results", tables.markdown_table(head, body)
                 + f"\nPaper, for orientation: {tables.PAPER_SPEED_NOTE}; its threshold is "
                   f"{tables.PAPER_THRESHOLD} AUC on retina.\n")]
    if claims is not None:
        found = claims(rs)
        write_claims(out_dir, found)
        sections.insert(0, claims_section(found))
    sections += extra_sections or []
    warnings = standard_warnings(plan_doc, rs)
    if rs and not any(r["reached_threshold"] for r in rs):
        best = max((r["best_auc"] for r in rs if r["best_auc"] is not None), default=None)
        warnings.append(f"No run reached the threshold {cfg['threshold']:g} within {cfg['steps']} "
                        f"steps (best AUC seen: {tables.fmt(best)}): the steps-to-threshold figure "
                        f"has no bars to compare; train longer (--steps) or set --threshold.")
    return document.write_report(
        out_dir, title=title, question=question, setup=setup_text(plan_doc, rs), sections=sections,
        figures=[(curve_title + " (line: mean over seeds; band: min..max)", curve_file),
                 (steps_title, steps_file)],
        warnings=warnings)
