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
transfusion/analysis/feature_reuse.py.

Similarity over training time, from the runs' model snapshots (checkpoints/step<t>.pt, kept every
ceil(steps / snapshots) steps; the preset's ``snapshots``: micro 2, demo 4, paper 0, or
``--snapshots N``), plus step 0 and the end: per stage and step t, CKA(stage at t, stage at the
end) and CKA(stage at t, stage at step 0), and CKA(random run's stage at t, transfer run's stage at
t) for the same model and seed (one pass over the N evaluation images per (model, seed, t)). The
snapshots are asked for through the run specs of every experiment (engine.training_spec), not
here, so feature-reuse still trains nothing of its own: its specs stay performance's.
"""
from __future__ import annotations

import json
from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.common import base_row, headline_key, load_plan_runs, setup_text, standard_warnings
from transfusion.report import document, figures, tables
from transfusion.train.run_folder import RunFolder

OPTIONS = ("small_data",)
TITLE = "Feature reuse: weight distance, stage resets and k-NN probes per layer (after paper Figs. 3-5)"
QUESTION = ("Where in the network is pretrained knowledge reused: which stages move, which matter "
            "when reset, and how useful are their features before and after training?")
WRITES = ("runs/<run_id>/feature_reuse.json (per-stage measures), results.csv (one row per run and "
          "layer: weight_distance, reinit_auc_drop, reinit_fresh_auc_drop, knn_auc_step0, "
          "knn_auc_final, cka, svcca), feature_reuse_<model>.png (the measures against depth, "
          "random vs transfer), weight_distance.png, over_time_<model>_s<seed>.json, "
          "similarity_over_time.csv (run_id, model, init, seed, layer, step, cka_to_end, "
          "cka_to_step0), similarity_random_vs_transfer.csv (model, seed, layer, step, "
          "cka_random_transfer), similarity_over_time_<model>.png, findings.csv, report.md")
INITS = ("random", "transfer")
#: the k-NN probe is fitted on the first KNN_TRAIN_FACTOR x (similarity images) training images
KNN_TRAIN_FACTOR = 2
#: seed of the fresh random draw a stage is reset to: FRESH_SEED + the run's seed. It differs from
#: every experiment seed (a random-init run at seed s starts from the draw of seed s, so that draw
#: would be its step-0 weights) and from the pretraining seed (10 000).
FRESH_SEED = 20_000
MEASURES = ("weight_distance", "reinit_auc_drop", "reinit_fresh_auc_drop", "knn_auc_step0",
            "knn_auc_final", "cka", "svcca")
OVER_TIME_COLUMNS = ("run_id", "model", "init", "seed", "layer", "step", "cka_to_end", "cka_to_step0")
ACROSS_COLUMNS = ("model", "seed", "layer", "step", "cka_random_transfer", "run_id_random",
                  "run_id_transfer")


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
    analyse_over_time(cfg, planned, runs_dir, ctx)


def run_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: model checkpoint} of a finished run: step0.pt, its snapshots and model_final.pt at
    the last step (a snapshot at the last step holds the same weights; the final model wins)."""
    folder = RunFolder(Path(run_dir))
    total = int(json.loads(folder.require(folder.final, "final metrics").read_text())["steps"])
    found = {step: path for step, path in folder.snapshots() if step < total}
    found[0] = folder.require(folder.step0, "step-0 model checkpoint")
    found[total] = folder.require(folder.model_final, "final model checkpoint")
    return dict(sorted(found.items()))


def _over_time_path(out_dir: Path, model: str, seed) -> Path:
    return Path(out_dir) / f"over_time_{model}_s{seed}.json"


def analyse_over_time(cfg, planned, runs_dir: Path, ctx) -> None:
    """over_time_<model>_s<seed>.json per (model, seed): CKA over training time of the random and
    the transfer run (see the module docstring); skipped when there for the same runs, steps and
    settings."""
    from transfusion.analysis.similarity import similarity_over_time
    from transfusion.utils import atomic_write_json

    groups: dict[tuple, dict[str, str]] = {}
    for p in planned:
        groups.setdefault((p.role["model"], p.role["seed"]), {})[p.role["init"]] = p.run_id
    for (m, seed), ids in sorted(groups.items(), key=str):
        runs = {i: run_checkpoints(Path(runs_dir) / rid) for i, rid in ids.items()}
        want = {"run_ids": ids, "steps": {i: list(ck) for i, ck in runs.items()},
                "n_eval": cfg.similarity_images, "pool": cfg.pool, "method": "cka"}
        out = _over_time_path(cfg.out_dir, m, seed)
        if out.is_file() and {k: v for k, v in json.loads(out.read_text()).items() if k in want} == want:
            continue
        across = tuple(INITS) if all(i in runs for i in INITS) else None
        res = similarity_over_time(runs, ctx.eval_batches, pool=cfg.pool, device=ctx.device,
                                   across=across)
        atomic_write_json(out, {"kind": "similarity_over_time", "model": m, "seed": seed, **want,
                                "rows": res["within"], "across": res["across"]})


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


def over_time_rows(plan_doc: dict, runs_dir: Path, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """similarity_over_time.csv rows (one per run, stage and step) and
    similarity_random_vs_transfer.csv rows (one per model, seed, stage and step)."""
    cfg = plan_doc["config"]
    recs = {r.run_id: r for r in load_plan_runs(plan_doc, runs_dir)}
    keys = sorted({(r.role.get("model"), r.role.get("seed")) for r in recs.values()}, key=str)
    within, across = [], []
    for m, seed in keys:
        path = _over_time_path(out_dir, m, seed)
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        ids = doc["run_ids"]
        for r in doc["rows"]:
            rid = ids.get(r["label"])
            if rid not in recs:
                continue
            base = base_row(recs[rid], cfg, plan_doc["pretrained"])
            steps = doc["steps"][r["label"]]
            within.append({"run_id": rid, "model": m, "init": r["label"], "seed": seed,
                           "layer": r["layer"], "step": r["step"], "cka_to_end": r["cka_to_end"],
                           "cka_to_step0": r["cka_to_step0"], "layer_index": r["layer_index"],
                           "end_step": max(steps), "snapshot_steps": " ".join(map(str, steps)),
                           "n_images": r.get("n_images"), "pool": doc.get("pool"),
                           **{k: base[k] for k in ("dataset", "data", "image_size", "preset")}})
        for r in doc.get("across", []):
            across.append({"model": m, "seed": seed, "layer": r["layer"], "step": r["step"],
                           "cka_random_transfer": r["cka"], "run_id_random": ids.get("random"),
                           "run_id_transfer": ids.get("transfer"), "layer_index": r["layer_index"],
                           "n_images": r.get("n_images"), "pool": doc.get("pool")})
    return within, across


def _over_time_figure(within: list[dict], across: list[dict], model: str, path: Path) -> bool:
    """similarity_over_time_<model>.png: CKA to the end, CKA to step 0 and CKA(random, transfer)
    against the step; one colour per stage, transfer solid, random dashed."""
    mine = [r for r in within if r["model"] == model]
    if not mine:
        return False
    layers = [n for _, n in sorted({(r["layer_index"], r["layer"]) for r in mine})]
    colour = {n: f"C{i % 10}" for i, n in enumerate(layers)}
    panels: dict[str, dict] = {"CKA(stage at step t, stage at the end)": {},
                               "CKA(stage at step t, stage at step 0)": {},
                               "CKA(random run at t, transfer run at t), same seed": {}}
    styles = {}
    for title, key in zip(list(panels)[:2], ("cka_to_end", "cka_to_step0")):
        for i in INITS:
            for layer in layers:
                per_seed = []
                for seed in sorted({r["seed"] for r in mine}, key=str):
                    pts = sorted((r["step"], r[key]) for r in mine
                                 if r["init"] == i and r["layer"] == layer and r["seed"] == seed)
                    if pts:
                        per_seed.append(([p[0] for p in pts], [p[1] for p in pts]))
                if per_seed:
                    label = f"{i} {layer}"
                    panels[title][label] = per_seed
                    styles[label] = {"color": colour[layer], "ls": "-" if i == "transfer" else "--"}
    cross = [r for r in across if r["model"] == model]
    for layer in layers:
        per_seed = []
        for seed in sorted({r["seed"] for r in cross}, key=str):
            pts = sorted((r["step"], r["cka_random_transfer"]) for r in cross
                         if r["layer"] == layer and r["seed"] == seed)
            if pts:
                per_seed.append(([p[0] for p in pts], [p[1] for p in pts]))
        if per_seed:
            panels[list(panels)[2]][layer] = per_seed
            styles[layer] = {"color": colour[layer], "ls": ":"}
    figures.step_panels({k: v for k, v in panels.items() if v}, path, styles=styles,
                        title=f"{model}: similarity over training time per stage (solid: transfer, "
                              "dashed: random; line: mean over seeds, band: min..max)")
    return True


def _over_time_tables(within: list[dict], across: list[dict], models: list[str]) -> str:
    steps = sorted({r["step"] for r in within} | {r["step"] for r in across})
    if not steps:
        return ""

    def cell(vals):
        m, _, n = tables.mean_std(vals)
        return "n/a" if n == 0 else f"{m:.2f}"

    head = ["model", "init", "layer"] + [f"t={t}" for t in steps]
    body = []
    for m in models:
        for i in INITS:
            mine = [r for r in within if r["model"] == m and r["init"] == i]
            for li, layer in sorted({(r["layer_index"], r["layer"]) for r in mine}):
                at = [r for r in mine if r["layer_index"] == li]
                body.append([m, i, layer] + [
                    cell([r["cka_to_end"] for r in at if r["step"] == t]) + " / "
                    + cell([r["cka_to_step0"] for r in at if r["step"] == t]) for t in steps])
    text = ("CKA(stage at t, stage at the end) / CKA(stage at t, stage at step 0), mean over seeds, "
            "at every kept step t (step 0, the snapshots, the end):\n\n" + tables.markdown_table(head, body))
    body = []
    for m in models:
        mine = [r for r in across if r["model"] == m]
        for li, layer in sorted({(r["layer_index"], r["layer"]) for r in mine}):
            at = [r for r in mine if r["layer_index"] == li]
            body.append([m, "random vs transfer", layer] + [
                cell([r["cka_random_transfer"] for r in at if r["step"] == t]) for t in steps])
    if body:
        text += ("\nCKA(random run's stage at t, transfer run's stage at t), same model and seed:\n\n"
                 + tables.markdown_table(head, body))
    return text


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
    within, across = over_time_rows(plan_doc, runs_dir, out_dir)
    tables.write_csv(out_dir / "similarity_over_time.csv", within,
                     columns=list(OVER_TIME_COLUMNS) + [k for k in (within[0] if within else {})
                                                        if k not in OVER_TIME_COLUMNS])
    tables.write_csv(out_dir / "similarity_random_vs_transfer.csv", across,
                     columns=list(ACROSS_COLUMNS) + [k for k in (across[0] if across else {})
                                                     if k not in ACROSS_COLUMNS])
    for m in models:
        name = f"similarity_over_time_{m}.png"
        if _over_time_figure(within, across, m, out_dir / name):
            figs.append((f"{m}: CKA over training time per stage (to the end, to step 0, random vs "
                         "transfer at the same step)", name))
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
             "pretrained features; large models change less during training than small ones.\n")
    base = [base_row(r, cfg, plan_doc["pretrained"]) for r in load_plan_runs(plan_doc, runs_dir)]
    warnings = standard_warnings(plan_doc, base)
    left_out = [m for m in cfg["models"] if m not in models]
    if left_out:
        warnings.append(f"Left out (not ResNet-layout or CBR): {', '.join(left_out)}.")
    bare = sorted({r["run_id"] for r in within if len(r["snapshot_steps"].split()) <= 2})
    if bare:
        warnings.append(f"{len(bare)} run(s) kept no snapshots ({', '.join(bare[:4])}"
                        f"{', ...' if len(bare) > 4 else ''}): similarity over training time has "
                        "only step 0 and the end. Rerun with --snapshots N (new runs: the snapshot "
                        "setting is part of every run's spec).")
    over_time = _over_time_tables(within, across, models)
    over_time_note = ("\nEvery row is one pass over the same evaluation images as above "
                      f"({cfg.get('similarity_images', 'n/a')} images, conv maps pooled to "
                      f"{cfg.get('pool', 'n/a')} x {cfg.get('pool', 'n/a')} positions). "
                      "CKA(end, end) = 1 and CKA(step 0, step 0) = 1 by definition. Rows: "
                      "similarity_over_time.csv, similarity_random_vs_transfer.csv.\n")
    sections = [claims.section(found),
                ("Results (mean ± std over seeds)", tables.markdown_table(head, body) + notes)]
    if over_time:
        sections.append(("Similarity over training time", over_time + over_time_note))
    return document.write_report(
        out_dir, title=TITLE, question=QUESTION, setup=setup_text(plan_doc, base),
        sections=sections, figures=figs, warnings=warnings)
