"""Issue 18: scheduler parameters for the submitit executor (``--executor-param KEY=VALUE``):
typed, checked against submitit before any work, passed to ``AutoExecutor.update_parameters``,
recorded in plan.json with the job ids.

The end-to-end test runs ``transfusion run mean-var --preset micro --executor submitit`` on
submitit's LOCAL cluster (each run a subprocess on this machine): 38-48 s on the 2-core
development VM (a pretraining job, then a job array of 3 runs), under CI's 60 s but marked slow. The plumbing is covered
in a few seconds by the tests above it (submitit's ``debug`` cluster runs jobs in-process)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
import train_fakes  # noqa: E402

from transfusion.errors import ConfigError  # noqa: E402
from transfusion.experiments.config import make_config, parse_executor_params  # noqa: E402
from transfusion.experiments.runs import RunSpec  # noqa: E402

submitit = pytest.importorskip("submitit")

from transfusion.experiments.runs import SubmititExecutor, submitit_parameters  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_values_are_typed():
    got = parse_executor_params(["timeout_min=10", "mem_gb=7.5", "stderr_to_stdout=true",
                                 "partition=gpu", "name=a=b"])
    assert got == {"timeout_min": 10, "mem_gb": 7.5, "stderr_to_stdout": True,
                   "partition": "gpu", "name": "a=b"}
    assert type(got["timeout_min"]) is int and got["stderr_to_stdout"] is True


@pytest.mark.parametrize("item", ["timeout_min", "=3", "timeout_min=", "two words=1", "a-b=1"])
def test_malformed_items_are_one_line(item):
    with pytest.raises(ConfigError, match="KEY=VALUE") as e:
        parse_executor_params([item])
    assert "\n" not in str(e.value)


def test_parameters_are_checked_against_submitit():
    got = submitit_parameters({"timeout_min": 10, "cpus_per_task": 1, "mem_gb": 4,
                               "array_parallelism": 3, "partition": "gpu",
                               "slurm_qos": "high", "name": 12, "cluster": "local"})
    assert got == {"timeout_min": 10, "cpus_per_task": 1, "mem_gb": 4,
                   "slurm_array_parallelism": 3, "slurm_partition": "gpu", "slurm_qos": "high",
                   "name": "12", "cluster": "local"}
    for bad, needle in [({"timeout_mins": 10}, "not a submitit parameter"),
                        ({"slurm_partitio": "x"}, "no parameter 'partitio'"),
                        ({"timeout_min": 1.5}, "whole number"),
                        ({"timeout_min": True}, "whole number"),
                        ({"cluster": "pbs"}, "clusters")]:
        with pytest.raises(ConfigError, match=needle) as e:
            submitit_parameters(bad)
        assert "\n" not in str(e.value)


def test_make_config_checks_them_before_any_work(tmp_path):
    kw = dict(preset="micro", out=str(tmp_path / "r"), runs=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="--executor submitit"):
        make_config("mean-var", executor="local", executor_params={"timeout_min": 5}, **kw)
    with pytest.raises(ConfigError, match="not a submitit parameter"):
        make_config("mean-var", executor="submitit", executor_params={"gpus": 5}, **kw)
    cfg = make_config("mean-var", executor="submitit",
                      executor_params={"array_parallelism": 2}, **kw)
    assert cfg.executor_params == {"slurm_array_parallelism": 2}
    assert cfg.to_dict()["executor_params"] == {"slurm_array_parallelism": 2}
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r").exists()


def test_executor_passes_parameters_and_reports_job_ids(tmp_path, monkeypatch):
    import transfusion.train.loop as L

    monkeypatch.setattr(L, "default_components", train_fakes.components)
    seen = {}
    real = submitit.AutoExecutor.update_parameters

    def spy(self, **kw):
        seen.update(kw)
        return real(self, **kw)

    monkeypatch.setattr(submitit.AutoExecutor, "update_parameters", spy)
    specs = [RunSpec(model="tiny", dataset="eyepacs", data_root="fake", recipe="retina", steps=2,
                     image_size=8, batch_size=8, seed=s, overrides={"eval_every": 2})
             for s in (0, 1)]
    reported = []
    ex = SubmititExecutor(runs_dir=tmp_path / "runs", cluster="debug", threads=1,
                          on_submit=reported.extend, timeout_min=7,
                          slurm_array_parallelism=2)
    out = ex.run(specs)
    assert [o["status"] for o in out] == ["finished", "finished"]
    assert seen == {"timeout_min": 7, "gpus_per_node": 1, "slurm_array_parallelism": 2}
    assert [r["run_id"] for r in reported] == [s.run_id for s in specs]
    assert all(r["job_id"] for r in reported) and ex.jobs == reported
    assert (tmp_path / "runs" / "_submitit").is_dir()  # beside the run folders, not in the cwd
    assert ex.run(specs) == out and ex.jobs == reported  # finished: nothing submitted again


def test_a_failed_job_is_one_line_naming_its_log(tmp_path, monkeypatch):
    import transfusion.train.loop as L

    def broken():
        raise ConfigError("the data root is gone")

    monkeypatch.setattr(L, "default_components", broken)
    spec = RunSpec(model="tiny", dataset="eyepacs", data_root="fake", recipe="retina", steps=2)
    with pytest.raises(ConfigError) as e:
        SubmititExecutor(runs_dir=tmp_path, cluster="debug").run([spec])
    msg = str(e.value)
    assert "\n" not in msg and "1 of 1 submitit job(s) failed" in msg and spec.run_id in msg


@pytest.mark.slow
def test_run_mean_var_through_submitit_local_cluster(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from transfusion.cli import app

    monkeypatch.setenv("TRANSFUSION_CACHE", str(tmp_path / "machine"))  # its own pretraining job
    args = ["run", "mean-var", "--preset", "micro", "--out", str(tmp_path / "results"),
            "--runs", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"),
            "--executor", "submitit", "--executor-param", "timeout_min=10",
            "--executor-param", "cpus_per_task=1", "--executor-param", "cluster=local"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    plan = json.loads((tmp_path / "results" / "mean-var" / "plan.json").read_text())
    ex = plan["executor"]
    assert ex["name"] == "submitit" and ex["cluster"] == "local"
    assert ex["parameters"] == {"timeout_min": 10, "cpus_per_task": 1, "gpus_per_node": 1}
    assert plan["config"]["executor_params"] == {"timeout_min": 10, "cpus_per_task": 1,
                                                 "cluster": "local"}
    run_ids = {r["run_id"] for r in plan["runs"]}
    jobs = {j["run_id"]: j["job_id"] for j in ex["jobs"]}
    assert run_ids <= set(jobs) and len(jobs) == len(run_ids) + 1  # + the pretraining job
    assert all((tmp_path / "runs" / r / "final.json").is_file() for r in run_ids)
    assert all(list((tmp_path / "runs" / "_submitit").glob(f"{j}_*log.out")) for j in jobs.values())
    assert (tmp_path / "results" / "mean-var" / "report.md").is_file()
