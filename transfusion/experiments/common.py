"""What every experiment shares: planned runs, the plan file, reading run folders, curves.

An experiment is a plan of runs plus an aggregation. ``PlannedRun`` pairs the role a run plays in
the experiment (model, init, seed, cut, data limit) with training's ``RunSpec``; the
plan is written to ``results/<experiment>/plan.json`` before anything is trained, so that
``transfusion report DIR`` can rebuild every table and figure from the run folders alone.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from transfusion.errors import ConfigError
from transfusion.report import document
from transfusion.train.run_folder import RunFolder
from transfusion.utils import atomic_write_json

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


@dataclass
class PlannedRun:
    """One training run of an experiment: its role (what the aggregation groups by) and its spec."""

    role: dict
    spec: object
    run_id: str = ""

    def __post_init__(self):
        if not self.run_id:
            self.run_id = self.spec.run_id


@dataclass
class RunRecord:
    """What a finished run folder holds: config.json, metrics.jsonl, final.json."""

    run_id: str
    path: Path
    role: dict
    config: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    final: dict | None = None

    @property
    def finished(self) -> bool:
        return self.final is not None


def write_plan(out_dir: Path, cfg, planned: list[PlannedRun], *, pretrained: dict[str, str],
               extra: dict | None = None) -> Path:
    """results/<experiment>/plan.json: the config, the pretrained sources and (role, run_id) list."""
    doc = {"format": "transfusion-plan", "version": 1, "config": cfg.to_dict(),
           "pretrained": pretrained, "runs": [{"role": p.role, "run_id": p.run_id} for p in planned],
           **(extra or {})}
    path = Path(out_dir) / PLAN_FILE
    atomic_write_json(path, doc)
    return path


def read_plan(out_dir: Path) -> dict:
    path = Path(out_dir) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: `transfusion report` needs a results/<experiment>/ folder "
                          f"written by `transfusion run <experiment>` (it holds plan.json)")
    doc = json.loads(path.read_text())
    if doc.get("format") != "transfusion-plan":
        raise ConfigError(f"{path} is not a transfusion plan file")
    return doc


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interrupted write: skip it
                log.warning("skipping an unreadable line in %s", path)
    return out


def load_run(runs_dir: Path, run_id: str, role: dict | None = None) -> RunRecord:
    folder = RunFolder.of(runs_dir, run_id)
    cfg = json.loads(folder.config.read_text()) if folder.config.is_file() else {}
    final = json.loads(folder.final.read_text()) if folder.final.is_file() else None
    return RunRecord(run_id=run_id, path=folder.path, role=dict(role or {}), config=cfg,
                     metrics=_read_jsonl(folder.metrics_jsonl), final=final)


def load_plan_runs(plan: dict, runs_dir: Path) -> list[RunRecord]:
    return [load_run(runs_dir, r["run_id"], r["role"]) for r in plan["runs"]]


def headline_key(dataset: str) -> str:
    """The metric the paper reports: referable-DR AUC (retina) or the mean of the 5 AUCs (chexpert)."""
    from transfusion.data.catalogue import headline

    return headline(dataset)


def eval_records(rec: RunRecord, key: str) -> list[dict]:
    """The metrics.jsonl records that carry ``key`` (evaluation records), in step order."""
    rows = [m for m in rec.metrics if _finite(m.get(key)) and m.get("step") is not None]
    return sorted(rows, key=lambda m: m["step"])


def curve(rec: RunRecord, key: str) -> tuple[list[int], list[float]]:
    rows = eval_records(rec, key)
    return [int(m["step"]) for m in rows], [float(m[key]) for m in rows]


def final_metric(rec: RunRecord, key: str) -> float:
    """The final model's ``key``: on the held-out test split when the run evaluated one (as the
    paper reports), else on the validation split (see :func:`final_split`)."""
    if rec.final is None:
        return math.nan
    for container in (rec.final.get("test", {}), rec.final, rec.final.get("metrics", {}),
                      rec.final.get("final_metrics", {})):
        if isinstance(container, dict) and _finite(container.get(key)):
            return float(container[key])
    rows = eval_records(rec, key)
    return float(rows[-1][key]) if rows else math.nan


def final_split(rec: RunRecord) -> str:
    """Where :func:`final_metric` comes from: 'test (N images)' or 'validation'."""
    test = (rec.final or {}).get("test")
    return f"test ({test.get('size')} images)" if isinstance(test, dict) else "validation"


def referable_test_scores(rec: RunRecord):
    """(referable-DR scores, referable labels) of the final model on the test split, per image,
    from the run's test_outputs.npz; None when the run has none or it is not a retina run."""
    import numpy as np

    from transfusion.train.metrics import REFERABLE_GRADE, referable_scores
    from transfusion.train.run_folder import RunFolder

    path = RunFolder(rec.path).test_outputs
    if not path.is_file() or (rec.final or {}).get("task") != "retina":
        return None
    with np.load(path) as z:
        logits, grades = z["logits"], z["targets"]
    return referable_scores(logits), grades >= REFERABLE_GRADE


def steps_to(rec: RunRecord, key: str, threshold: float) -> float | None:
    """First evaluated step at which ``key`` >= threshold (transfusion.train.metrics.steps_to_threshold)."""
    from transfusion.train.metrics import steps_to_threshold

    rows = eval_records(rec, key)
    return steps_to_threshold(rows, key, threshold) if rows else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def base_row(rec: RunRecord, cfg: dict, pretrained: dict) -> dict:
    """The settings every results.csv row carries (what was actually run)."""
    role = rec.role
    model = role.get("model")
    return {
        "experiment": cfg["experiment"], "run_id": rec.run_id, "model": model,
        "evaluated_on": final_split(rec),
        "init": role.get("init"), "upto": role.get("upto"), "seed": role.get("seed"),
        "dataset": cfg["dataset"], "data": cfg.get("data_dir") or "synthetic",
        "data_format": cfg.get("data_format") or "synthetic",
        "label_policy": rec.config.get("label_policy", role.get("label_policy")),
        "train_limit": role.get("limit"), "image_size": cfg["image_size"],
        "steps": cfg["steps"], "batch_size": rec.config.get("batch_size", cfg.get("batch_size")),
        "optimizer": rec.config.get("optimizer"), "lr": rec.config.get("lr"),
        "preset": cfg["preset"],
        "pretrained_source": pretrained.get(model) if role.get("init") not in ("random", None)
        else "none (random init)",
        "finished": rec.finished,
    }


def setup_text(plan_doc, rs) -> str:
    cfg = plan_doc["config"]
    r0 = next((r for r in rs if r.get("finished")), rs[0] if rs else {})
    recipe = {k: r0.get(k) for k in ("optimizer", "lr", "batch_size") if r0.get(k) is not None}
    lrs = sorted({(r.get("model"), r.get("lr")) for r in rs if r.get("lr") is not None}, key=str)
    if len({lr for _, lr in lrs}) > 1:  # per-model learning rates (a preset's model_overrides)
        recipe["lr"] = ", ".join(f"{lr} ({m})" for m, lr in lrs)
    extra = {**cfg.get("recipe_overrides", {})}
    if extra:
        recipe["also"] = ", ".join(f"{k}={v}" for k, v in extra.items())
    if cfg["dataset"] == "retina":
        data = {"labels": "DR grade 0-4 (5-way cross-entropy); referable DR = grade >= 2, its AUC is "
                          "the headline metric"}
    else:
        data = {"label policy (uncertain labels)": r0.get("label_policy") or "see run config"}
    splits = sorted({r.get("evaluated_on") for r in rs if r.get("evaluated_on")})
    final = (f"final metrics of the last step's model on the held-out {splits[0]}"
             if len(splits) == 1 and splits[0].startswith("test")
             else "'final' = the last step's model, on the validation split (or the test split "
                  "where results.csv's evaluated_on says so)")
    data["evaluation"] = ("curves: AUC on the patient-disjoint validation split, evaluated every "
                          f"{cfg['eval_every']} steps; {final}")
    return document.setup_section(cfg, data=data, recipe=recipe, pretrained=plan_doc["pretrained"])


def standard_warnings(plan_doc, rs) -> list[str]:
    w = []
    unfinished = [r["run_id"] for r in rs if not r.get("finished")]
    if unfinished:
        w.append(f"{len(unfinished)} run(s) not finished: {', '.join(unfinished)}; rerun the same "
                 f"`transfusion run` command to finish them")
    if any("synthetic" in str(v).lower() for v in plan_doc["pretrained"].values()):
        w.append("PRETRAINED WEIGHTS WERE MADE ON THE FLY on the synthetic natural-image source, not "
                 "ImageNet: 'transfer' here means transfer from that source. Pass --pretrained "
                 "MODEL=PATH for real ImageNet weights.")
    if not plan_doc["config"].get("data_dir"):
        w.append("Data: built-in synthetic images; the paper's numbers are on real data and are shown "
                 "for orientation only.")
    return w
