import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.errors import ConfigError  # noqa: E402
from transfusion.experiments.runs import LocalExecutor, RunSpec  # noqa: E402
from transfusion.train import run_training  # noqa: E402
from transfusion.train.loop import SeededItems, StepBatchSampler  # noqa: E402

OVR = {"eval_every": 4, "log_every": 2, "checkpoint_every": 5, "eval_batch_size": 16,
       "augment": True}


def spec(**kw):
    return train_fakes.tiny_spec(OVR, **kw)


def run(s, d, **kw):
    return run_training(s, d, components=train_fakes.components(), progress=False, **kw)


def test_tiny_run_writes_every_file(tmp_path):
    s = spec()
    final = run(s, tmp_path)
    d = tmp_path / s.run_id
    for f in ("config.json", "init_summary.json", "metrics.jsonl", "metrics.csv", "final.json",
              "model_final.pt", "checkpoints/step0.pt"):
        assert (d / f).is_file(), f
    assert not (d / "checkpoints" / "last.pt").exists()  # resume state, dropped at the end
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["spec"] == json.loads(s.to_json()) and cfg["recipe"]["batch_size"] == 8
    assert cfg["recipe"]["image_size"] == 8 and "torch" in cfg["environment"]
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in rows if r["kind"] == "eval"]
    assert evals == [0, 4, 8, 12]
    trains = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in trains] == [2, 4, 6, 8, 10, 12]
    assert all(r["images_per_s"] > 0 and r["lr"] == pytest.approx(1e-3) for r in trains)
    assert (d / "metrics.csv").read_text().splitlines()[0].startswith("step,kind")
    assert final["status"] == "finished" and final["headline"] == "auc_referable"
    assert 0.0 <= final["auc_referable"] <= 1.0 and "kappa" in final["metrics"]
    m0 = torch.load(d / "checkpoints/step0.pt", weights_only=False)
    assert m0["format"] == "transfusion-model" and set(m0["state_dict"]) == {
        "conv.weight", "conv.bias", "fc.weight", "fc.bias"}
    # rerunning a finished run does nothing
    mtime = (d / "final.json").stat().st_mtime_ns
    assert run(s, tmp_path) == final
    assert (d / "final.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("stop_after", [5, 7])
def test_resume_gives_the_same_final_metrics(tmp_path, stop_after):
    s = spec()
    full = run(s, tmp_path / "a")
    part = run(s, tmp_path / "b", max_steps_this_session=stop_after)
    assert part["status"] == "interrupted" and part["step"] == stop_after
    assert not (tmp_path / "b" / s.run_id / "final.json").exists()
    resumed = run(s, tmp_path / "b")
    assert resumed["metrics"] == full["metrics"]
    sessions = json.loads((tmp_path / "b" / s.run_id / "config.json").read_text())["sessions"]
    assert [x["from_step"] for x in sessions] == [0, stop_after]
    rows_a = (tmp_path / "a" / s.run_id / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / s.run_id / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items()  # noqa: E731
                           if k not in ("images_per_s", "eval_s")} for r in rows]
    assert strip(rows_a) == strip(rows_b)
    a = torch.load(tmp_path / "a" / s.run_id / "model_final.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / s.run_id / "model_final.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_chexpert_like_multilabel_run(tmp_path):
    s = spec(dataset="chexpert", recipe="chexpert", steps=14,
             overrides={**OVR, "warmup_epochs": 1, "decay_epochs": "2", "eval_every": 7})
    final = run(s, tmp_path)
    assert final["headline"] == "auc_mean" and "auc_pleural_effusion" in final["metrics"]
    rows = [json.loads(x) for x in (tmp_path / s.run_id / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    # 48 images / batch 8 = 6 steps per epoch: warm-up over steps 0..5, /10 from step 12 on.
    # A train row at step s logs the lr of the update made at step s - 1 (0-based).
    lr = 0.1 * 8 / 256
    assert lrs == pytest.approx([lr / 6, lr * 3 / 6, lr * 5 / 6, lr, lr, lr, lr * 0.1])


def test_sampler_is_a_function_of_seed_and_step():
    a = StepBatchSampler(10, 4, seed=1, start_step=0, total_steps=6)
    b = StepBatchSampler(10, 4, seed=1, start_step=3, total_steps=6)
    assert list(a)[3:] == list(b)
    flat = [i for batch in list(a)[:5] for i, _ in batch]  # 20 items = 2 epochs
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    seeds = [s for batch in a for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every position of the stream has its own seed
    r0 = StepBatchSampler(10, 4, 1, 0, 6, rank=0, world=2)
    r1 = StepBatchSampler(10, 4, 1, 0, 6, rank=1, world=2)
    assert [x + y for x, y in zip(r0, r1)] == list(a)  # same items, same seeds, split over ranks
    with pytest.raises(ConfigError, match="divisible"):
        StepBatchSampler(10, 5, 1, 0, 6, rank=0, world=2)


def test_augmentation_is_keyed_by_stream_position_not_by_global_rng():
    ds = SeededItems(train_fakes.load_dataset("eyepacs", "x", "train", image_size=4, augment=True))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    xs = [ds[(i, 1000 + i)][0] for i in range(16)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    torch.manual_seed(123)
    assert all(torch.equal(ds[(i, 1000 + i)][0], x) for i, x in enumerate(xs))
    flipped = sum(not torch.equal(x, ds.ds.images[i]) for i, x in enumerate(xs))
    assert 0 < flipped < 16


def test_resume_with_worker_processes(tmp_path):
    s = spec(steps=6, overrides={**OVR, "eval_every": 3})
    full = run(s, tmp_path / "a")
    run(s, tmp_path / "b", num_workers=1, max_steps_this_session=4)
    assert run(s, tmp_path / "b", num_workers=1)["metrics"] == full["metrics"]


def test_run_id_is_stable_and_readable():
    s = spec()
    assert s.run_id == spec().run_id and s.run_id.startswith("tiny-random-s3-")
    assert spec(seed=4).run_id != s.run_id
    assert RunSpec.from_dict(json.loads(s.to_json())).run_id == s.run_id
    t = spec(model="CBR-Small", init="transfuse", upto="block2", seed=0)
    assert t.run_id.startswith("cbr_small-transfuse_block2-s0-")
    with pytest.raises(ConfigError, match="upto"):
        spec(init="transfuse")
    with pytest.raises(ConfigError, match="unknown field"):
        RunSpec.from_dict({**s.to_dict(), "lr": 1})


def test_local_executor_runs_and_skips(tmp_path, monkeypatch):
    import transfusion.train.loop as L

    monkeypatch.setattr(L, "default_components", train_fakes.components)
    specs = [spec(steps=2, seed=0), spec(steps=2, seed=1)]
    out = LocalExecutor(runs_dir=tmp_path).run(specs)
    assert [o["run_id"] for o in out] == [s.run_id for s in specs]
    assert all(o["status"] == "finished" for o in out)
    assert LocalExecutor().run(specs, tmp_path) == out


def test_equal_settings_share_a_run_id():
    assert spec(overrides={"eval_every": "4"}).run_id == spec(overrides={"eval_every": 4}).run_id
    assert spec(recipe=None).run_id == spec(recipe="retina").run_id
    with pytest.raises(ConfigError, match="unknown recipe field"):
        spec(overrides={"learning_rate": 1})


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(tmp_path):
    import os
    import signal

    s = spec()
    full = run(s, tmp_path / "a")
    calls = {"n": 0}

    def killing_build(name, num_classes, in_channels=3, **kw):
        model = train_fakes.build_model(name, num_classes, in_channels)
        inner = model.forward

        def forward(x):
            if model.training:
                calls["n"] += 1
                if calls["n"] == 6:  # during the 6th training step
                    os.kill(os.getpid(), signal.SIGTERM)
            return inner(x)

        model.forward = forward
        return model

    c = train_fakes.components()
    c.build_model = killing_build
    part = run_training(s, tmp_path / "b", components=c, progress=False)
    assert part["status"] == "interrupted" and part["stopped_by"] == "SIGTERM" and part["step"] == 6
    assert "Rerun the same command" in part["message"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert run(s, tmp_path / "b")["metrics"] == full["metrics"]


def test_bf16_autocast_and_channels_last_switches_run(tmp_path):
    s = spec(steps=2, overrides={**OVR, "amp": "bf16", "channels_last": True})
    out = run(s, tmp_path)
    assert out["status"] == "finished"
    cfg = json.loads((tmp_path / s.run_id / "config.json").read_text())
    assert cfg["recipe"]["amp"] == "bf16" and cfg["recipe"]["channels_last"] is True


def test_submitit_executor_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    from transfusion.experiments.runs import SubmititExecutor, make_executor

    real_import = builtins.__import__

    def no_submitit(name, *a, **kw):
        if name == "submitit":
            raise ImportError("No module named 'submitit'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(ConfigError, match="pip install submitit"):
        SubmititExecutor(folder=tmp_path).run([spec()])
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("slurm")
    assert isinstance(make_executor("local", runs_dir=tmp_path), LocalExecutor)
