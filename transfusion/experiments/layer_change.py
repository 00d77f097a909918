"""Layer change (paper Figs. 3 and 5): how much does each layer move during training?

One run per (model, init). For each, the per-layer SVCCA between the model at step 0 and at the end
over the same evaluation images (Fig. 3: high = the layer barely changed), and conv1's filters
before and after training as image grids, for random init and for transfer (Fig. 5).
"""
from __future__ import annotations

import json
from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.common import base_row, load_plan_runs, setup_text, standard_warnings
from transfusion.report import document, figures, tables
from transfusion.train.run_folder import RunFolder
from transfusion.utils import atomic_write_json

TITLE = "Layer change during training: CCA(init, final) per layer (paper Figs. 3, 5)"
QUESTION = ("Which layers change most during training, from random init and from transfer? Do "
            "conv1 filters keep their pretrained shape?")
WRITES = ("runs/<run_id>/similarity.json (per-layer CCA(step 0, final)), results.csv (one row per "
          "model, init and layer), cca_init_final.png (Fig. 3), conv1_filters_<model>.png (Fig. 5), "
          "cross_layer_<model>_<init>.png (every stage at step 0 against every stage at the end), "
          "report.md")
INITS = ("random", "transfer")


def plan(cfg, make) -> list:
    # every seed: the claims pair runs by seed (the runs are the performance experiment's)
    return [make(model=m, init=i, seed=s) for m in cfg.models for i in INITS for s in cfg.seeds]


def analyse(cfg, planned, runs_dir: Path, ctx) -> None:
    from transfusion.analysis.similarity import cross_layer_map, init_vs_final, load_checkpoint_model

    for p in planned:
        run_dir = Path(runs_dir) / p.run_id
        if not RunFolder(run_dir).similarity.is_file():
            init_vs_final(ctx.step0_checkpoint(run_dir), ctx.final_checkpoint(run_dir), ctx.eval_batches(),
                          out=RunFolder(run_dir).similarity, pool=cfg.pool, device=ctx.device)
        # the cross-layer map (every stage at step 0 against every stage at the end), first seed
        out = cfg.out_dir / _map_name(p.role, "json")
        if p.role["seed"] != cfg.seeds[0] or (out.is_file() and json.loads(out.read_text()).get("run_id") == p.run_id):
            continue
        m = cross_layer_map(load_checkpoint_model(ctx.step0_checkpoint(run_dir))[0],
                            load_checkpoint_model(ctx.final_checkpoint(run_dir))[0], ctx.eval_batches(),
                            pool=cfg.pool, device=ctx.device)
        atomic_write_json(out, {"run_id": p.run_id, **m.to_dict()})


def _map_name(role: dict, ext: str) -> str:
    return f"cross_layer_{role['model']}_{role['init']}.{ext}"


def _checkpoint(run_dir: Path, which: str) -> Path | None:
    folder = RunFolder(Path(run_dir))
    path = {"step0": folder.step0, "final": folder.model_final}[which]
    return path if path.is_file() else None


def conv1_weights(run_dir: Path, which: str):
    """conv1's weight (numpy, (out, in, k, k)) from the run's step-0 or final model checkpoint."""
    from transfusion.analysis.similarity import load_checkpoint_model

    path = _checkpoint(Path(run_dir), which)
    if path is None:
        return None
    model, _ = load_checkpoint_model(path)
    return model.state_dict()[model.first_conv_key].detach().cpu().numpy()


def rows(plan_doc: dict, runs_dir: Path) -> list[dict]:
    cfg = plan_doc["config"]
    out = []
    for rec in load_plan_runs(plan_doc, runs_dir):
        path = RunFolder(rec.path).similarity
        if not path.is_file():
            continue
        base = base_row(rec, cfg, plan_doc["pretrained"])
        for i, r in enumerate(json.loads(path.read_text())["rows"]):
            n, a = r.get("n_datapoints"), r.get("neurons_a")
            out.append({**base, "layer": r["layer"], "layer_index": i, "svcca": r.get("svcca"),
                        "cka": r.get("cka"), "n_images": r.get("n_images"), "n_datapoints": n,
                        "neurons": a, "few_datapoints": (n < 10 * a) if n and a else None})
    return out


def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    cfg = plan_doc["config"]
    rs = rows(plan_doc, runs_dir)
    tables.write_csv(out_dir / "results.csv", rs)
    series = {}
    for m in cfg["models"]:
        for i in INITS:
            mine = [r for r in rs if r["model"] == m and r["init"] == i]
            layers = sorted({(r["layer_index"], r["layer"]) for r in mine})
            if layers:  # mean over seeds per layer
                vals = [tables.mean_std([r["svcca"] for r in mine if r["layer_index"] == li])[0]
                        for li, _ in layers]
                series[f"{m} {i}"] = ([name for _, name in layers], vals)
    figs = []
    if series:
        figures.layer_curves(series, out_dir / "cca_init_final.png",
                             title="Fig. 3: SVCCA(layer at step 0, layer at the end)")
        figs.append(("Per-layer SVCCA between initialisation and the end of training", "cca_init_final.png"))
    for m in cfg["models"]:
        panels = {}
        for r in plan_doc["runs"]:
            if r["role"]["model"] != m or r["role"]["seed"] != cfg["seeds"][0]:
                continue
            for which, when in (("step0", "before"), ("final", "after")):
                w = conv1_weights(Path(runs_dir) / r["run_id"], which)
                if w is not None:
                    panels[f"{r['role']['init']}: {when} training"] = w
        for i in INITS:
            src = Path(out_dir) / _map_name({"model": m, "init": i}, "json")
            if src.is_file():
                doc = json.loads(src.read_text())
                name = _map_name({"model": m, "init": i}, "png")
                figures.similarity_heatmap(doc["values"], doc["rows"], doc["cols"], Path(out_dir) / name,
                                           row_label="stage at step 0", col_label="stage at the end",
                                           value_label="linear CKA",
                                           title=f"{m} {i}, seed {cfg['seeds'][0]}: CKA(step 0, end)")
                figs.append((f"{m}, {i}: every stage at step 0 against every stage at the end "
                             f"(linear CKA; the diagonal is Fig. 3's curve)", name))
        if panels:
            name = f"conv1_filters_{m}.png"
            figures.filter_grids(panels, out_dir / name, title=f"Fig. 5: {m} conv1 filters")
            figs.append((f"{m}: conv1 filters before and after training, random and transfer", name))
    body = [[r["model"], r["init"], r["seed"], r["layer"], tables.fmt(r["svcca"]), tables.fmt(r["cka"])]
            for r in rs]
    found = claims.layer_change(rs, list(cfg["models"]), "cca_init_final.png")
    claims.write(out_dir, found)
    recs = load_plan_runs(plan_doc, runs_dir)
    base = [base_row(r, cfg, plan_doc["pretrained"]) for r in recs]
    section = (tables.markdown_table(["model", "init", "seed", "layer", "SVCCA(init, final)",
                                      "CKA(init, final)"], body)
               + "\nPaper (Fig. 3): with transfer, lower layers change little and the top layers most; "
                 "from random init, lower layers change much more. Fig. 5: transferred conv1 filters "
                 "barely change; random ones stay noisy.\n")
    return document.write_report(out_dir, title=TITLE, question=QUESTION, setup=setup_text(plan_doc, base),
                                 sections=[claims.section(found), ("Results", section)], figures=figs,
                                 warnings=standard_warnings(plan_doc, base))
