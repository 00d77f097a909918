"""Every experiment end to end on the micro preset (tiny synthetic data, a few steps), sharing one
runs/ folder like `transfusion run all` does; checks the files each writes and their columns."""
import json

import pytest
import torch
from typer.testing import CliRunner

from transfusion.cli import app
from transfusion.experiments import common
from transfusion.experiments.config import make_config
from transfusion.experiments.engine import RunsInterrupted, run_experiment
from transfusion.report.tables import read_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RUN_COLUMNS = {"experiment", "run_id", "model", "init", "seed", "dataset", "data", "label_policy",
               "image_size", "steps", "batch_size", "optimizer", "lr", "preset", "pretrained_source",
               "finished"}


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    return {"out": str(root / "results"), "runs": str(root / "runs"), "cache": str(root / "cache")}


def _run(name, space, **kw):
    cfg = make_config(name, preset="micro", **space, **kw)
    report = run_experiment(cfg)
    return cfg.out_dir, report.read_text()


def _png(path):
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", path


def test_performance(space):
    out, text = _run("performance", space)
    rows = read_csv(out / "results.csv")
    assert RUN_COLUMNS | {"auc", "auprc", "ece", "metric"} <= set(rows[0])
    assert {(r["model"], r["init"]) for r in rows} == {("cbr_tiny", "random"), ("cbr_tiny", "transfer")}
    assert all(r["finished"] == "True" or r["finished"] is True for r in rows)
    _png(out / "auc.png")
    assert "![" in text and "SYNTHETIC" in text and "96.4" not in text.split("## Figures")[1]
    assert "pretrained ON THE FLY" in text  # said loudly


def test_representations(space):
    out, text = _run("representations", space)
    rows = read_csv(out / "results.csv")
    assert {"model", "pair", "layer", "top_layer", "svcca", "cka", "run_a", "run_b"} <= set(rows[0])
    assert {r["pair"] for r in rows} == {"random vs transfer", "random vs random"}
    assert all(0 <= r["svcca"] <= 1.0001 for r in rows if r["svcca"] is not None)
    _png(out / "cca_top_layers.png")
    assert (out / "similarity_cbr_tiny_s0.json").is_file()  # one triplet per seed


def test_layer_change(space):
    out, text = _run("layer-change", space)
    rows = read_csv(out / "results.csv")
    assert RUN_COLUMNS | {"layer", "layer_index", "svcca", "cka"} <= set(rows[0])
    assert {r["layer"] for r in rows} == {"cbr1", "cbr2", "cbr3", "cbr4"}
    _png(out / "cca_init_final.png")
    _png(out / "conv1_filters_cbr_tiny.png")
    _png(out / "cross_layer_cbr_tiny_transfer.png")  # the cross-layer CKA map
    for r in json.loads((out / "plan.json").read_text())["runs"]:
        assert (common.Path(space["runs"]) / r["run_id"] / "similarity.json").is_file()


@pytest.mark.parametrize("name,kw,settings", [
    ("mean-var", {}, {"random", "mean_var", "transfer"}),
    ("gabor", {}, {"gabor conv1", "transfused conv1", "random"}),
    ("weight-transfusion", {"upto": "conv1"}, {"upto conv1"}),
    # full-size ResNet50 + resnet50_slim (no narrow slim exists): the slowest test, 2 steps
    ("slim", {"steps": 2}, {"slim (pretrained to block2)", "transfer", "random"}),
])
def test_speed_experiments(space, name, kw, settings):
    out, text = _run(name, space, **kw)
    rows = read_csv(out / "results.csv")
    assert RUN_COLUMNS | {"setting", "auc", "threshold", "steps_to_threshold", "reached_threshold"} <= set(rows[0])
    assert {r["setting"] for r in rows} == settings
    assert all(r["threshold"] == 0.5 for r in rows)
    _png(out / "auc_vs_step.png")
    _png(out / "steps_to_threshold.png")
    assert "Steps-to-threshold level" in text
    assert "## Findings" in text and (out / "findings.csv").is_file()


def test_report_rebuilds_from_run_folders(space):
    out = common.Path(space["out"]) / "performance"
    for f in ("results.csv", "auc.png", "report.md"):
        (out / f).unlink()
    result = CliRunner().invoke(app, ["report", space["out"]])
    assert result.exit_code == 0, result.output
    assert (out / "results.csv").is_file() and (out / "auc.png").is_file() and (out / "report.md").is_file()
    assert len(read_csv(out / "results.csv")) == 2
    # the findings index: every experiment's declared claims, each with a verdict
    found = read_csv(common.Path(space["out"]) / "findings.csv")
    experiments = {r["experiment"] for r in found}
    assert {"performance", "representations", "layer-change", "mean-var", "gabor", "slim",
            "weight-transfusion"} <= experiments
    assert all(r["verdict"] in ("supported", "contradicted", "inconclusive") for r in found)
    assert (common.Path(space["out"]) / "findings.md").is_file()


def test_compare_prints_per_layer_similarity(space):
    runs = sorted(common.Path(space["runs"]).glob("cbr_tiny-random-*/model_final.pt"))
    result = CliRunner().invoke(app, ["compare", str(runs[0]), str(runs[0]), "--images", "16",
                                      "--image-size", "32", "--pool", "2", "--cache", space["cache"]])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("cbr")]
    assert len(lines) == 4 and all(line.split()[1] == "1.000" for line in lines)
    # the cross-layer map: every stage against every stage, a unit diagonal for one model
    from transfusion.analysis.similarity import cross_layer_map, eval_batches, load_checkpoint_model
    from transfusion.data import load_dataset

    heat = common.Path(space["out"]) / "map.png"
    result = CliRunner().invoke(app, ["compare", str(runs[0]), str(runs[0]), "--images", "16",
                                      "--image-size", "32", "--pool", "2", "--cache", space["cache"],
                                      "--map", str(heat)])
    assert result.exit_code == 0, result.output
    assert heat.read_bytes()[:4] == b"\x89PNG" and "cross-layer CKA map" in result.output
    model, _ = load_checkpoint_model(runs[0])
    roots = sorted(common.Path(space["cache"]).glob("fundus-*"))
    ds = load_dataset("eyepacs", roots[0], "test", image_size=32, augment=False)
    m = cross_layer_map(model, model, eval_batches(ds, 16), pool=2)
    assert m.rows == m.cols == list(model.stage_names)
    torch.testing.assert_close(torch.diagonal(m.values), torch.ones(4, dtype=torch.float64))


def test_interrupted_experiment_resumes_without_redoing_finished_runs(space, monkeypatch):
    import transfusion.experiments.runs as runs_mod

    real = runs_mod._run_one
    calls = []

    def stop_second(spec_dict, runs_dir, device, num_workers, threads):
        if spec_dict["seed"] in (5, 6):
            calls.append(spec_dict["seed"])
        # the second run is 'killed' after one step
        if len(calls) == 2 and spec_dict["seed"] == calls[-1] and spec_dict["init"] == "random":
            from transfusion.experiments.runs import RunSpec
            from transfusion.train import run_training

            return run_training(RunSpec.from_dict(spec_dict), common.Path(runs_dir), max_steps_this_session=1)
        return real(spec_dict, runs_dir, device, num_workers, threads)

    monkeypatch.setattr(runs_mod, "_run_one", stop_second)
    kw = dict(models=("cbr_tiny",), seeds=(5, 6), steps=4)
    with pytest.raises(RunsInterrupted, match="rerun the same command"):
        _run("performance", {**space, "out": space["out"] + "_resume"}, **kw)
    plan = json.loads((common.Path(space["out"] + "_resume") / "performance" / "plan.json").read_text())
    runs_dir = common.Path(space["runs"])
    done = [r["run_id"] for r in plan["runs"] if (runs_dir / r["run_id"] / "final.json").is_file()]
    assert len(done) == 1
    stamp = (runs_dir / done[0] / "final.json").stat().st_mtime_ns
    monkeypatch.setattr(runs_mod, "_run_one", real)
    out, _ = _run("performance", {**space, "out": space["out"] + "_resume"}, **kw)
    assert (runs_dir / done[0] / "final.json").stat().st_mtime_ns == stamp  # not redone
    assert all((runs_dir / r["run_id"] / "final.json").is_file() for r in plan["runs"])
    assert len(read_csv(out / "results.csv")) == 4


def test_pretraining_seed_differs_from_experiment_seeds(space):
    from transfusion.experiments.engine import PRETRAIN_SEED, pretrain_spec

    cfg = make_config("performance", preset="micro", **space)
    assert pretrain_spec(cfg, "cbr_tiny").seed == PRETRAIN_SEED not in range(100)
