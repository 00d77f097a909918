"""`run all` says which run of how many it is on, with an ETA (issue 15)."""
import logging

from transfusion.experiments import runs
from transfusion.train.spec import RunSpec


def test_local_executor_reports_run_i_of_n_with_an_eta(tmp_path, monkeypatch, caplog):
    done = []
    monkeypatch.setattr(runs, "_run_one", lambda spec, *a: done.append(spec["seed"]))
    specs = [RunSpec(model="cbr_tiny", dataset="eyepacs", data_root="synthetic", seed=s) for s in range(3)]
    with caplog.at_level(logging.INFO, logger="transfusion.experiments.runs"):
        runs.LocalExecutor(runs_dir=tmp_path).run(specs)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")]
    assert done == [0, 1, 2]
    assert [ln.split(":")[0] for ln in lines] == ["run 1/3", "run 2/3", "run 3/3"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transfusion.experiments.runs"):
        runs.LocalExecutor(runs_dir=tmp_path).run(specs[:1])  # one run: no 'run 1/1' noise
    assert not [r for r in caplog.records if r.getMessage().startswith("run ")]
    assert "left" not in lines[0] and all("left)" in ln for ln in lines[1:])
    assert specs[2].run_id in lines[2]


def test_parallel_runs_give_the_sequential_results_and_report_progress(tmp_path, caplog):
    """--parallel-runs 2: two worker processes (one torch thread each) train the plan; every run
    finishes with exactly the numbers of the one-at-a-time plan (runs are pure functions of their
    spec), and the pool logs 'finished i/N' lines."""
    import json

    from transfusion.experiments.config import make_config
    from transfusion.experiments.engine import run_experiment

    finals = {}
    for n in (1, 2):
        cfg = make_config("performance", preset="micro", seeds=(0, 1), parallel_runs=n,
                          out=str(tmp_path / f"r{n}"), runs=str(tmp_path / f"runs{n}"),
                          cache=str(tmp_path / "cache"))
        with caplog.at_level(logging.INFO, logger="transfusion.experiments.runs"):
            run_experiment(cfg)
        plan = json.loads((cfg.out_dir / "plan.json").read_text())
        finals[n] = {r["run_id"]: json.loads((tmp_path / f"runs{n}" / r["run_id"] / "final.json").read_text())
                     for r in plan["runs"]}
    assert len(finals[1]) == 4 and finals[1].keys() == finals[2].keys()
    for rid, f in finals[1].items():
        assert f["status"] == finals[2][rid]["status"] == "finished"
        assert f["metrics"] == finals[2][rid]["metrics"]
        assert f["test"]["auc_referable"] == finals[2][rid]["test"]["auc_referable"]
    msgs = [r.getMessage() for r in caplog.records]
    import os

    threads = max(1, (os.cpu_count() or 1) // 2)
    assert any(f"4 runs on 2 worker processes ({threads} torch thread" in m for m in msgs)
    assert any(m.startswith("finished 4/4") for m in msgs)


def test_parallel_runs_must_be_positive(tmp_path):
    import pytest

    from transfusion.errors import ConfigError
    from transfusion.experiments.config import make_config

    with pytest.raises(ConfigError, match="--parallel-runs must be >= 1"):
        make_config("performance", preset="micro", parallel_runs=0, out=str(tmp_path))


def test_run_all_with_a_pool_trains_every_experiments_runs_in_one_list(tmp_path, monkeypatch):
    """`run all --parallel-runs 2`: the pretraining, then one execute() over the runs of every
    experiment (no worker idles at each experiment's end); each experiment then finds its runs
    finished."""
    from pathlib import Path

    from typer.testing import CliRunner

    import transfusion.experiments.engine as engine
    from transfusion.cli import app
    from transfusion.experiments import EXPERIMENT_NAMES

    calls, seen = [], []
    real_execute = engine.execute

    def spy(cfg, specs, jobs=None, runs_dir=None):
        calls.append(sorted({s.run_id for s in specs}))
        return real_execute(cfg, specs, jobs, runs_dir=runs_dir)

    def fake_experiment(cfg):
        seen.append(cfg.experiment)
        return Path(cfg.out_dir) / "report.md"

    monkeypatch.setattr(engine, "execute", spy)
    monkeypatch.setattr(engine, "run_experiment", fake_experiment)
    result = CliRunner().invoke(app, ["run", "all", "--preset", "micro", "--parallel-runs", "2",
                                      "--out", str(tmp_path / "r"), "--runs", str(tmp_path / "runs"),
                                      "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "one pool of 2 workers" in result.output and seen == list(EXPERIMENT_NAMES)
    pretraining, together = calls  # the pretraining runs, then every experiment's runs at once
    assert all(r.startswith("pretrain_") for r in pretraining)
    models = {r.split("-")[0] for r in together}
    assert {"cbr_tiny", "resnet50_narrow", "resnet50_narrow_slim"} <= models
    assert all((tmp_path / "runs" / r / "final.json").is_file() for r in together)


def test_decode_cache_is_on_only_while_a_preset_that_asks_trains(tmp_path, monkeypatch):
    """The demo's decode cache reaches the training processes through the environment, and is put
    back afterwards: a later plan in the same process (another preset, real 587 px images) must
    not cache its decoded images."""
    import os

    import transfusion.experiments.runs as runs_mod
    from transfusion.experiments.config import make_config
    from transfusion.experiments.engine import execute
    from transfusion.train.data_stream import DECODE_CACHE_ENV

    monkeypatch.delenv(DECODE_CACHE_ENV, raising=False)
    seen = []
    monkeypatch.setattr(runs_mod, "_run_one", lambda *a: seen.append(os.environ.get(DECODE_CACHE_ENV)))
    spec = RunSpec(model="cbr_tiny", dataset="eyepacs", data_root="synthetic", seed=0)
    for preset in ("demo", "micro"):
        cfg = make_config("performance", preset=preset, parallel_runs=1, out=str(tmp_path),
                          runs=str(tmp_path / preset))
        try:
            execute(cfg, [spec])
        except Exception:  # noqa: BLE001 - the fake run writes no final.json: 'did not finish'
            pass
        assert DECODE_CACHE_ENV not in os.environ
    assert seen == ["1", None]
