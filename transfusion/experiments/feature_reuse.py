"""Feature reuse (after the paper's Figs. 3-5; issue 17): where in the network is transfer reused?

Uses the performance experiment's runs (model x {random, transfer} x seed, the very same run
specs, so nothing is trained twice) of the preset's ResNet-layout and CBR models. For each run and
each stage, between its model at step 0 and at the end:

- weight_distance: ||w_T - w_0|| / ||w_0|| of the stage's parameters (conv/linear weights and
  biases, BatchNorm affine parameters);
- reinit_auc_drop: the final model's AUC minus its AUC with this stage alone reset to its step-0
  values; reinit_fresh_auc_drop: reset to a fresh random draw (seed 20 000 + the run seed);
- knn_auc_step0 / knn_auc_final: a k-NN probe (k = 10, cosine similarity) on the stage's globally
  average-pooled features, fitted on the first 2 x N training images, scored on the first N
  evaluation images (N = the preset's similarity image count);
- cka and svcca between the stage at step 0 and at the end (the run's similarity.json, shared with
  layer-change; computed here when missing).

AUCs are the headline target (referable DR on retina, the mean over pathologies on CheXpert) on the
same fixed evaluation images (the test split's first N). The definitions are in
transfusion/analysis/feature_reuse.py. Not done here: similarity over training time (it needs model
checkpoints at chosen steps of the training loop).
"""
from __future__ import annotations

import json
from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.common import (base_row, headline_key, load_plan_runs, setup_text,
                                            standard_warnings)
from transfusion.report import document, figures, tables
from transfusion.train.run_folder import RunFolder

NAME = "feature-reuse"
TITLE = "Feature reuse: weight distance, stage resets and k-NN probes per layer (after paper Figs. 3-5)"
QUESTION = ("Where in the network is pretrained knowledge reused: which stages move, which matter "
            "when reset, and how useful are their features before and after training?")
WRITES = ("runs/<run_id>/feature_reuse.json (per-stage measures), results.csv (one row per run and "
          "layer: weight_distance, reinit_auc_drop, reinit_fresh_auc_drop, knn_auc_step0, "
          "knn_auc_final, cka, svcca), feature_reuse_<model>.png (the measures against depth, "
          "random vs transfer), weight_distance.png, findings.csv, report.md")
INITS = ("random", "transfer")
#: the k-NN probe is fitted on the first KNN_TRAIN_FACTOR x (similarity images) training images
KNN_TRAIN_FACTOR = 2
#: seed of the fresh random draw a stage is reset to: FRESH_SEED + the run's seed. It differs from
#: every experiment seed (a random-init run at seed s starts from the draw of seed s, so that draw
#: would be its step-0 weights) and from the pretraining seed (10 000).
FRESH_SEED = 20_000
MEASURES = ("weight_distance", "reinit_auc_drop", "reinit_fresh_auc_drop", "knn_auc_step0",
            "knn_auc_final", "cka", "svcca")


def covered(models) -> list[str]:
    """The ResNet-layout and CBR models among ``models`` (Inception-v3 is left out)."""
    from transfusion.models import CBRNet, ResNet, model_skeleton

    return [m for m in models if isinstance(model_skeleton(m, 2), (ResNet, CBRNet))]


def plan(cfg, make) -> list:
    from transfusion.errors import ConfigError

    models = covered(cfg.models)
    if not models:
        raise ConfigError(f"feature-reuse covers the ResNet-layout and CBR models; --models "
                          f"{','.join(cfg.models)} has none of them")
    # the performance experiment's run specs (same roles, same data limit): no extra training
    return [make(model=m, init=i, seed=s, limit=cfg.small_data)
            for m in models for i in INITS for s in cfg.seeds]


def settings(cfg, data: dict) -> dict:
    from transfusion.analysis.feature_reuse import KNN_K, KNN_METRIC

    return {"data": data["root"], "dataset": data["dataset"], "image_size": cfg.image_size,
            "eval_split": "test", "n_eval": cfg.similarity_images,
            "train_split": "train", "n_train": KNN_TRAIN_FACTOR * cfg.similarity_images,
            "knn_k": KNN_K, "knn_metric": KNN_METRIC, "fresh_seed": FRESH_SEED}


def analyse(cfg, planned, runs_dir: Path, ctx) -> None:
    from transfusion.analysis.feature_reuse import run_feature_reuse
    from transfusion.analysis.similarity import eval_items, init_vs_final, load_checkpoint_model
    from transfusion.utils import atomic_write_json

    want = settings(cfg, ctx.data)
    test, train = ctx.dataset(want["eval_split"]), ctx.dataset(want["train_split"])
    for p in {p.run_id: p for p in planned}.values():
        run_dir = Path(runs_dir) / p.run_id
        folder = RunFolder(run_dir)
        step0, final = ctx.step0_checkpoint(run_dir), ctx.final_checkpoint(run_dir)
        if not folder.similarity.is_file():  # the same file layer-change writes and reads
            init_vs_final(step0, final, ctx.eval_batches(), out=folder.similarity, pool=cfg.pool,
                          device=ctx.device)
        if folder.feature_reuse.is_file():
            if json.loads(folder.feature_reuse.read_text()).get("settings") == want:
                continue
        m0, _ = load_checkpoint_model(step0)
        m1, _ = load_checkpoint_model(final)
        rows = run_feature_reuse(
            m0, m1, lambda: eval_items(test, want["n_eval"]), lambda: eval_items(train, want["n_train"]),
            kind=test.task.kind, label_names=tuple(test.task.label_names),
            fresh_seed=FRESH_SEED + int(p.role["seed"]), k=want["knn_k"], device=ctx.device)
        atomic_write_json(folder.feature_reuse, {"kind": "feature_reuse", "settings": want,
                                                 "step0": str(step0), "final": str(final), "rows": rows})


def rows(plan_doc: dict, runs_dir: Path) -> list[dict]:
    cfg = plan_doc["config"]
    out = []
    for rec in load_plan_runs(plan_doc, runs_dir):
        folder = RunFolder(rec.path)
        if not folder.feature_reuse.is_file():
            continue
        doc = json.loads(folder.feature_reuse.read_text())
        sim = {}
        if folder.similarity.is_file():
            sim = {r["layer"]: r for r in json.loads(folder.similarity.read_text())["rows"]}
        base = base_row(rec, cfg, plan_doc["pretrained"])
        st = doc.get("settings", {})
        for r in doc["rows"]:
            s = sim.get(r["layer"], {})
            row = {"run_id": rec.run_id, "model": base["model"], "init": base["init"],
                   "seed": base["seed"], "layer": r["layer"], "layer_index": r["layer_index"],
                   **{k: r.get(k) for k in MEASURES[:5]}, "cka": s.get("cka"), "svcca": s.get("svcca")}
            row.update(base)
            row.update({"metric": headline_key(cfg["dataset"]), "eval_auc": r.get("eval_auc"),
                        "reinit_auc": r.get("reinit_auc"), "reinit_fresh_auc": r.get("reinit_fresh_auc"),
                        "n_eval": r.get("n_eval"), "n_train": r.get("n_train"),
                        "knn_k": st.get("knn_k"), "knn_metric": st.get("knn_metric"),
                        "fresh_seed": (st.get("fresh_seed") or 0) + int(base["seed"] or 0)})
            out.append(row)
    return out


PANELS = (("relative weight distance ||w_T - w_0|| / ||w_0||", ("weight_distance",)),
          ("AUC drop when the stage is reset (solid: to step 0; dashed: fresh draw)",
           ("reinit_auc_drop", "reinit_fresh_auc_drop")),
          ("k-NN AUC on pooled features (solid: end; dotted: step 0)", ("knn_auc_final", "knn_auc_step0")),
          ("similarity(step 0, end) (solid: SVCCA; dashed: CKA)", ("svcca", "cka")))
_LS = {"weight_distance": "-", "reinit_auc_drop": "-", "reinit_fresh_auc_drop": "--",
       "knn_auc_final": "-", "knn_auc_step0": ":", "svcca": "-", "cka": "--"}
_COLOR = {"random": "C1", "transfer": "C0"}


def _per_seed(rs: list[dict], model: str, init: str, measure: str) -> tuple[list[str], list[list]]:
    mine = [r for r in rs if r["model"] == model and r["init"] == init]
    layers = sorted({(r["layer_index"], r["layer"]) for r in mine})
    seeds = sorted({r["seed"] for r in mine}, key=str)
    vals = {(r["seed"], r["layer_index"]): r.get(measure) for r in mine}
    return [n for _, n in layers], [[vals.get((s, li)) for li, _ in layers] for s in seeds]


def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    cfg = plan_doc["config"]
    rs = rows(plan_doc, runs_dir)
    tables.write_csv(out_dir / "results.csv", rs)
    models = covered(cfg["models"])
    figs = []
    series = {}
    for m in models:
        panels, styles = {}, {}
        for title, measures in PANELS:
            panel = {}
            for i in INITS:
                for meas in measures:
                    layers, per_seed = _per_seed(rs, m, i, meas)
                    if per_seed:
                        label = f"{i} {meas}"
                        panel[label] = (layers, per_seed)
                        styles[label] = {"color": _COLOR[i], "ls": _LS[meas]}
                        if meas == "weight_distance":
                            means = [tables.mean_std([s[j] for s in per_seed])[0] for j in range(len(layers))]
                            series[f"{m} {i}"] = (layers, means)
            panels[title] = panel
        if any(panels.values()):
            name = f"feature_reuse_{m}.png"
            figures.depth_panels(panels, out_dir / name, styles=styles,
                                 title=f"{m}: feature reuse per stage, random vs transfer "
                                       "(line: mean over seeds; band: min..max)")
            figs.append((f"{m}: the four measures against depth, random vs transfer", name))
    if series:
        figures.layer_curves(series, out_dir / "weight_distance.png", ylim=(0, None),
                             ylabel="||w_T - w_0|| / ||w_0||",
                             title="Relative weight distance (step 0 to the end) per stage, mean over seeds")
        figs.insert(0, ("Relative weight distance per stage, every model and init", "weight_distance.png"))
    found = claims.feature_reuse(rs, models, "weight_distance.png")
    claims.write(out_dir, found)
    head = ["model", "init", "layer", "weight distance", "reset drop (step 0)", "reset drop (fresh)",
            "k-NN AUC step 0", "k-NN AUC end", "CKA", "SVCCA"]
    body = []
    for m in models:
        for i in INITS:
            mine = [r for r in rs if r["model"] == m and r["init"] == i]
            for li, layer in sorted({(r["layer_index"], r["layer"]) for r in mine}):
                at = [r for r in mine if r["layer_index"] == li]
                body.append([m, i, layer] + [tables.fmt_mean_std(*tables.mean_std([r.get(k) for r in at]))
                                             for k in MEASURES])
    st = rs[0] if rs else {}
    notes = (f"\nMeasures: see the module docstring of transfusion/experiments/feature_reuse.py. AUCs "
             f"({headline_key(cfg['dataset'])}) are on the first {st.get('n_eval', 'n/a')} test images; "
             f"the k-NN probe uses k = {st.get('knn_k', 'n/a')}, {st.get('knn_metric', 'cosine')} "
             f"similarity, fitted on the first {st.get('n_train', 'n/a')} training images. A stage "
             "reset restores its parameters and BatchNorm running statistics.\n"
             "Paper (Figs. 3-5): with transfer the lowest layers change least and keep their "
             "pretrained features; large models change less during training than small ones.\n"
             "Not measured here: similarity over training time (it needs checkpoints at chosen "
             "training steps).\n")
    base = [base_row(r, cfg, plan_doc["pretrained"]) for r in load_plan_runs(plan_doc, runs_dir)]
    warnings = standard_warnings(plan_doc, base)
    left_out = [m for m in cfg["models"] if m not in models]
    if left_out:
        warnings.append(f"Left out (not ResNet-layout or CBR): {', '.join(left_out)}.")
    return document.write_report(
        out_dir, title=TITLE, question=QUESTION, setup=setup_text(plan_doc, base),
        sections=[claims.section(found),
                  ("Results (mean ± std over seeds)", tables.markdown_table(head, body) + notes)],
        figures=figs, warnings=warnings)
