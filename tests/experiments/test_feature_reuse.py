"""`transfusion run feature-reuse` on the micro preset (issue 17): it reuses the performance runs,
writes its files and columns, and its numbers agree with hand computations from the run folders."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from transfusion.checkpoints import load_torch_file
from transfusion.cli import app
from transfusion.experiments import EXPERIMENT_NAMES
from transfusion.experiments.config import make_config
from transfusion.experiments.engine import run_experiment
from transfusion.report.tables import read_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLUMNS = ["run_id", "model", "init", "seed", "layer", "layer_index", "weight_distance",
           "reinit_auc_drop", "reinit_fresh_auc_drop", "knn_auc_step0", "knn_auc_final", "cka", "svcca"]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    space = {"out": str(root / "results"), "runs": str(root / "runs"), "cache": str(root / "cache")}
    run_experiment(make_config("performance", preset="micro", **space))
    runs = Path(space["runs"])
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/final.json")}
    cfg = make_config("feature-reuse", preset="micro", **space)
    report = run_experiment(cfg)
    return {"space": space, "out": cfg.out_dir, "report": report, "stamps": stamps, "runs": runs,
            "rows": read_csv(cfg.out_dir / "results.csv")}


def test_reuses_the_performance_runs(done):
    plan = lambda name: {r["run_id"] for r in json.loads(  # noqa: E731
        (Path(done["space"]["out"]) / name / "plan.json").read_text())["runs"]}
    assert plan("feature-reuse") == plan("performance")
    now = {p.parent.name: p.stat().st_mtime_ns for p in done["runs"].glob("*/final.json")}
    assert now == done["stamps"]  # nothing trained again, nothing new trained


def test_files_and_columns(done):
    out, rows = done["out"], done["rows"]
    assert list(rows[0])[:len(COLUMNS)] == COLUMNS
    assert {(r["init"], r["layer"]) for r in rows} == {
        (i, f"cbr{k}") for i in ("random", "transfer") for k in (1, 2, 3, 4)}
    for r in rows:
        assert r["weight_distance"] > 0
        assert all(isinstance(r[c], float) and math.isfinite(r[c]) for c in COLUMNS[6:])
        assert 0 <= r["knn_auc_step0"] <= 1 and 0 <= r["knn_auc_final"] <= 1
        assert r["knn_metric"] == "cosine" and 5 <= r["knn_k"] <= 20
    for name in ("feature_reuse_cbr_tiny.png", "weight_distance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    text = done["report"].read_text()
    assert "## Findings" in text and "feature reuse concentrates in the lowest layers" in text
    found = read_csv(out / "findings.csv")
    assert found[0]["experiment"] == "feature-reuse"
    for r in read_csv(out / "results.csv"):  # cka/svcca are layer-change's similarity.json values
        sim = json.loads((done["runs"] / r["run_id"] / "similarity.json").read_text())["rows"]
        assert r["svcca"] == pytest.approx(next(s["svcca"] for s in sim if s["layer"] == r["layer"]))


def _state(path):
    return load_torch_file(path)["state_dict"]


def test_weight_distance_by_hand(done):
    row = next(r for r in done["rows"] if r["init"] == "transfer" and r["layer"] == "cbr2")
    ckpts = done["runs"] / row["run_id"]
    s0, s1 = _state(ckpts / "checkpoints" / "step0.pt"), _state(ckpts / "model_final.pt")
    keys = [k for k in s0 if k.startswith("cbr2.") and not k.endswith(BUFFERS)]
    assert keys and any(k.endswith("conv.weight") for k in keys)
    w0 = torch.cat([s0[k].double().flatten() for k in keys])
    w1 = torch.cat([s1[k].double().flatten() for k in keys])
    assert row["weight_distance"] == pytest.approx(float((w1 - w0).norm() / w0.norm()), rel=1e-9)


def _auc(score, positive):
    pos, neg = score[positive], score[~positive]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_reinit_auc_drop_by_hand(done):
    from transfusion.data import load_dataset
    from transfusion.initializers.checkpoint import load_model_checkpoint

    plan = json.loads((done["out"] / "plan.json").read_text())
    row = next(r for r in done["rows"] if r["init"] == "random" and r["layer"] == "cbr1")
    ckpts = done["runs"] / row["run_id"]
    ds = load_dataset(plan["data"]["dataset"], plan["data"]["root"], "test", image_size=32,
                      augment=False, seed=0)
    items = [ds[i] for i in range(min(16, len(ds)))]  # the micro preset's 16 evaluation images
    x = torch.stack([it[0] for it in items])
    referable = np.array([int(it[1]) >= 2 for it in items])

    def auc_of(model):
        with torch.no_grad():
            p = torch.softmax(model.eval()(x).double(), 1)[:, 2:].sum(1).numpy()
        return _auc(p, referable)

    final, _ = load_model_checkpoint(ckpts / "model_final.pt", cbr_fused=False)  # eager modules
    base = auc_of(final)
    s0 = _state(ckpts / "checkpoints" / "step0.pt")
    state = final.state_dict()
    state.update({k: v for k, v in s0.items() if k.startswith("cbr1.")})  # weights and BN buffers
    final.load_state_dict(state)
    assert row["eval_auc"] == pytest.approx(base, abs=1e-6)
    assert row["reinit_auc_drop"] == pytest.approx(base - auc_of(final), abs=1e-6)


def test_in_run_all_and_in_help():
    names = list(EXPERIMENT_NAMES)
    assert "feature-reuse" in names
    # after performance (its runs) and layer-change (its similarity.json)
    assert names.index("feature-reuse") > max(names.index("performance"), names.index("layer-change"))
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "feature-reuse" in result.output


def test_run_all_includes_feature_reuse(tmp_path, monkeypatch):
    import transfusion.experiments.engine as engine

    seen = []

    def fake(cfg):
        seen.append(cfg.experiment)
        return Path(cfg.out_dir) / "report.md"

    monkeypatch.setattr(engine, "run_experiment", fake)
    result = CliRunner().invoke(app, ["run", "all", "--preset", "micro", "--out", str(tmp_path / "r"),
                                      "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "feature-reuse" in seen and seen == list(EXPERIMENT_NAMES)


def test_compare_prints_weight_distance(done):
    row = next(r for r in done["rows"] if r["init"] == "transfer" and r["layer"] == "cbr3")
    ckpts = done["runs"] / row["run_id"]
    result = CliRunner().invoke(app, ["compare", str(ckpts / "checkpoints" / "step0.pt"),
                                      str(ckpts / "model_final.pt"), "--images", "16", "--image-size",
                                      "32", "--pool", "2", "--cache", done["space"]["cache"]])
    assert result.exit_code == 0, result.output
    assert "WDIST" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("cbr3"))
    assert float(line.split()[3]) == pytest.approx(row["weight_distance"], abs=5e-4)


def test_claims_from_rows():
    from transfusion.experiments.claims import feature_reuse

    rows = []
    for m, scale in (("cbr_tiny", 1.0), ("cbr_small", 0.5)):  # cbr_small is the larger model
        for init in ("random", "transfer"):
            for seed in range(4):
                for li in range(4):
                    rows.append({"model": m, "init": init, "seed": seed, "layer_index": li,
                                 "weight_distance": scale * (0.1 + 0.1 * li + 0.01 * seed)})
    found = {f["claim"]: f for f in feature_reuse(rows, ["cbr_tiny", "cbr_small"], "x.png")}
    assert found["feature reuse concentrates in the lowest layers"]["verdict"] == "supported"
    big = found["large models move less than small ones"]
    assert big["verdict"] == "supported" and big["effect"] > 0 and "cbr_tiny" in big["criterion"]


def test_similarity_over_time(done):
    """Snapshots of the performance runs (micro: every 2 of 4 steps, kept after the end) -> CKA per
    stage and step to the end and to step 0, and random vs transfer at matched steps."""
    out, runs = done["out"], done["runs"]
    for rid in {r["run_id"] for r in done["rows"]}:
        ck = runs / rid / "checkpoints"
        assert sorted(p.name for p in ck.iterdir()) == ["step0.pt", "step2.pt", "step4.pt"]
    rows = read_csv(out / "similarity_over_time.csv")
    assert list(rows[0])[:8] == ["run_id", "model", "init", "seed", "layer", "step", "cka_to_end",
                                 "cka_to_step0"]
    stages = [f"cbr{k}" for k in (1, 2, 3, 4)]
    assert {(r["init"], r["layer"], r["step"]) for r in rows} == {
        (i, s, t) for i in ("random", "transfer") for s in stages for t in (0, 2, 4)}
    final_cka = {(r["run_id"], r["layer"]): r["cka"] for r in done["rows"]}
    for r in rows:
        assert 0 <= r["cka_to_end"] <= 1 + 1e-9 and 0 <= r["cka_to_step0"] <= 1 + 1e-9
        if r["step"] == 4:  # the end: CKA(end, end) = 1 for every stage
            assert r["cka_to_end"] == pytest.approx(1.0, abs=1e-9)
        if r["step"] == 0:
            assert r["cka_to_step0"] == pytest.approx(1.0, abs=1e-9)
            # CKA(step 0, end): the same number as similarity.json's (same images, same pooling)
            assert r["cka_to_end"] == pytest.approx(final_cka[(r["run_id"], r["layer"])], abs=1e-9)
        if r["step"] == 4:
            back = next(x for x in rows if x["run_id"] == r["run_id"] and x["layer"] == r["layer"]
                        and x["step"] == 0)
            assert r["cka_to_step0"] == pytest.approx(back["cka_to_end"], abs=1e-9)  # symmetric
    cross = read_csv(out / "similarity_random_vs_transfer.csv")
    assert {(r["layer"], r["step"]) for r in cross} == {(s, t) for s in stages for t in (0, 2, 4)}
    ids = {r["init"]: r["run_id"] for r in rows}
    assert all(r["run_id_random"] == ids["random"] and r["run_id_transfer"] == ids["transfer"]
               and 0 <= r["cka_random_transfer"] <= 1 + 1e-9 for r in cross)
    assert (out / "similarity_over_time_cbr_tiny.png").read_bytes()[:4] == b"\x89PNG"
    text = done["report"].read_text()
    assert "## Similarity over training time" in text and "similarity_over_time_cbr_tiny.png" in text


def test_similarity_over_time_is_not_recomputed(done):
    path = done["out"] / "over_time_cbr_tiny_s0.json"
    stamp = path.stat().st_mtime_ns
    run_experiment(make_config("feature-reuse", preset="micro", **done["space"]))
    assert path.stat().st_mtime_ns == stamp
