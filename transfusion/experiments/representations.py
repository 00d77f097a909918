"""Representations (paper Fig. 2): do transfer and random initialisation learn the same features?

Per model and seed s: a triplet of runs, random A (seed s), transfer (seed s) and random B (the
next seed, cyclically), all shared with the performance experiment. After training, the three are
fed the same fixed evaluation images in one pass and the per-layer (SV)CCA is computed for the
pairs (random A, transfer) and (random A, random B). The paper's number is the mean over the top
two layers/stages (``model.top_stages``): CCA(random, transfer) vs CCA(random, random); one
triplet per seed lets the claim be paired over seeds.
"""
from __future__ import annotations

from pathlib import Path

from transfusion.experiments import claims
from transfusion.experiments.common import base_row, load_plan_runs, setup_text, standard_warnings
from transfusion.report import document, figures, tables
from transfusion.utils import atomic_write_json

TITLE = "Representations: CCA(random, transfer) vs CCA(random, random) (paper Fig. 2)"
QUESTION = "Do networks trained from transfer and from random init learn similar representations?"
WRITES = ("similarity_<model>_s<seed>.json (per-layer SVCCA/CKA of one triplet), results.csv (one "
          "row per model, seed, pair and layer), cca_top_layers.png (Fig. 2), findings.csv, report.md")
PAIRS = (("rand_a", "transfer"), ("rand_a", "rand_b"))
PAIR_LABEL = {("rand_a", "transfer"): "random vs transfer", ("rand_a", "rand_b"): "random vs random"}


def _triplets(seeds) -> list[tuple[int, int]]:
    """(seed of random A and transfer, seed of random B): B is the next seed, cyclically."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return [(seeds[0], seeds[0] + 1)]
    return [(s, seeds[(i + 1) % len(seeds)]) for i, s in enumerate(seeds)]


def plan(cfg, make) -> list:
    runs = []
    for m in cfg.models:
        for a, b in _triplets(cfg.seeds):
            runs += [make(model=m, init="random", seed=a, slot="rand_a", triplet=a),
                     make(model=m, init="random", seed=b, slot="rand_b", triplet=a),
                     make(model=m, init="transfer", seed=a, slot="transfer", triplet=a)]
    return runs


def analyse(cfg, planned, runs_dir: Path, ctx) -> None:
    """One pass per (model, triplet) over the evaluation images; writes
    similarity_<model>_s<seed>.json (skipped when it is there for the same runs)."""
    from transfusion.analysis.similarity import compare_models, load_checkpoint_model

    for m, t in sorted({(p.role["model"], p.role["triplet"]) for p in planned}, key=str):
        out = cfg.out_dir / f"similarity_{m}_s{t}.json"
        mine = {p.role["slot"]: p for p in planned if p.role["model"] == m and p.role["triplet"] == t}
        ids = {slot: p.run_id for slot, p in mine.items()}
        if out.is_file() and _read(out).get("run_ids") == ids:
            continue
        models = {slot: load_checkpoint_model(ctx.final_checkpoint(runs_dir / p.run_id))[0]
                  for slot, p in mine.items()}
        rows = compare_models(models, list(PAIRS), ctx.eval_batches(), pool=cfg.pool,
                              device=ctx.device)
        top = list(models["rand_a"].top_stages)
        atomic_write_json(out, {"kind": "representations", "model": m, "triplet": t, "run_ids": ids,
                                "top_stages": top, "pool": cfg.pool, "rows": rows})


def _few(r: dict) -> bool | None:
    """True when the layer had fewer than 10 datapoints per neuron: (SV)CCA is then biased upward."""
    n, a = r.get("n_datapoints"), max(r.get("neurons_a") or 0, r.get("neurons_b") or 0)
    return None if not n or not a else n < 10 * a


def _read(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text())


def rows(plan_doc: dict, runs_dir: Path, out_dir: Path) -> list[dict]:
    cfg = plan_doc["config"]
    recs = {(r.role["model"], r.role["triplet"], r.role["slot"]): r
            for r in load_plan_runs(plan_doc, runs_dir)}
    out = []
    for m, t in sorted({(k[0], k[1]) for k in recs}, key=str):
        path = Path(out_dir) / f"similarity_{m}_s{t}.json"
        if not path.is_file():
            continue
        doc = _read(path)
        for r in doc["rows"]:
            base = base_row(recs[(m, t, r["model_b"])], cfg, plan_doc["pretrained"])
            out.append({**{k: base[k] for k in ("experiment", "model", "dataset", "data", "image_size",
                                                  "steps", "preset")},
                        "seed": t, "pair": PAIR_LABEL[(r["model_a"], r["model_b"])],
                        "run_a": doc["run_ids"][r["model_a"]], "run_b": doc["run_ids"][r["model_b"]],
                        "layer": r["layer"], "top_layer": r["layer"] in doc["top_stages"],
                        "svcca": r.get("svcca"), "cka": r.get("cka"), "n_images": r.get("n_images"),
                        "n_datapoints": r.get("n_datapoints"), "neurons": r.get("neurons_a"),
                        "few_datapoints": _few(r),
                        "pool": doc.get("pool"), "pretrained_source": plan_doc["pretrained"].get(m)})
    return out


def report(plan_doc: dict, runs_dir: Path, out_dir: Path) -> Path:
    cfg = plan_doc["config"]
    rs = rows(plan_doc, runs_dir, out_dir)
    tables.write_csv(out_dir / "results.csv", rs)
    top = [r for r in rs if r["top_layer"]]
    stats = tables.group_mean_std(top, ("model", "pair"), "svcca")
    cka = tables.group_mean_std(top, ("model", "pair"), "cka")
    labels = list(PAIR_LABEL.values())
    groups = {m: {p: stats[(m, p)][:2] for p in labels if (m, p) in stats} for m in cfg["models"]}
    ref = {m: dict(zip(labels, tables.PAPER_FIG2_CCA[m])) for m in cfg["models"]
           if m in tables.PAPER_FIG2_CCA}
    figures.grouped_bars(groups, out_dir / "cca_top_layers.png", ylabel="SVCCA, mean of the top two layers",
                         title="Fig. 2: representational similarity of the top two layers",
                         reference=ref, reference_label="paper (real retina, read off Fig. 2)",
                         ylim=(0, 1))
    body = []
    for m in cfg["models"]:
        for p in labels:
            if (m, p) in stats:
                paper = ref.get(m, {}).get(p)
                body.append([m, p, tables.fmt(stats[(m, p)][0]), tables.fmt(cka[(m, p)][0]),
                             "n/a" if paper is None else f"~{paper}"])
    recs = load_plan_runs(plan_doc, runs_dir)
    base = [base_row(r, cfg, plan_doc["pretrained"]) for r in recs]
    found = claims.representations(rs, list(cfg["models"]), "cca_top_layers.png")
    claims.write(out_dir, found)
    section = (tables.markdown_table(["model", "pair", "SVCCA (top 2 layers)", "linear CKA (top 2)",
                                      "paper CCA"], body)
               + f"\nPaper note: {tables.PAPER_FIG2_NOTE}. Conv activations pooled to "
                 f"{cfg['pool']}x{cfg['pool']} positions per image; SVCCA keeps 99% of the variance. "
                 f"Per-layer values for every stage are in results.csv.\n")
    few = sorted({f"{r['model']}/{r['layer']}" for r in rs if r.get("few_datapoints")})
    if few:
        section += (f"\n**Caution**: fewer than 10 datapoints per neuron at {', '.join(few)} (column "
                    f"few_datapoints): (SV)CCA is biased upward there; feed more images "
                    f"(more evaluation images or a larger image size) for a trustworthy value.\n")
    return document.write_report(
        out_dir, title=TITLE, question=QUESTION, setup=setup_text(plan_doc, base),
        sections=[claims.section(found), ("Results", section)],
        figures=[("SVCCA of the top two layers: random vs transfer, random vs random", "cca_top_layers.png")],
        warnings=standard_warnings(plan_doc, base))
