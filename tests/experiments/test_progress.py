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
