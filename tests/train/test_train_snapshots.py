"""Model snapshots at chosen steps (recipe snapshot_every, issue 17): written at every N-th step in
step0.pt's format, kept after the run ends, and the same files with the same weights after an
interrupted and resumed run; specs that do not ask for them keep their run_id."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.errors import ConfigError  # noqa: E402
from transfusion.train import run_training  # noqa: E402
from transfusion.train.recipes import get_recipe  # noqa: E402
from transfusion.train.run_folder import RunFolder  # noqa: E402

OVR = {"eval_every": 4, "log_every": 2, "checkpoint_every": 5, "eval_batch_size": 16,
       "augment": True}


def spec(snapshot_every=3, **kw):
    ovr = dict(OVR, **({"snapshot_every": snapshot_every} if snapshot_every is not None else {}))
    return train_fakes.tiny_spec(ovr, **kw)


def run(s, d, **kw):
    return run_training(s, d, components=train_fakes.components(), progress=False, **kw)


def weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


def snapshot_files(runs, s):
    return {step: p.name for step, p in RunFolder.of(runs, s.run_id).snapshots()}


@pytest.mark.parametrize("every,steps", [(3, [0, 3, 6, 9, 12]), (5, [0, 5, 10])])
def test_snapshots_at_every_nth_step_and_kept_after_the_end(tmp_path, every, steps):
    s = spec(every)
    assert run(s, tmp_path)["status"] == "finished"
    folder = RunFolder.of(tmp_path, s.run_id)
    assert [st for st, _ in folder.snapshots()] == steps
    assert all(p == folder.snapshot(st) for st, p in folder.snapshots())
    assert not folder.training_state.exists()  # last.pt goes at the end, the snapshots stay
    for st, p in folder.snapshots():
        ck = torch.load(p, weights_only=False)
        assert ck["format"] == "transfusion-model" and ck["meta"]["step"] == st
        assert set(ck) == set(torch.load(folder.step0, weights_only=False))  # step0.pt's format
        assert "optimizer" not in ck
    final = weights(folder.model_final)
    last = weights(folder.snapshot(steps[-1]))
    assert all(torch.equal(final[k], last[k]) for k in final) == (steps[-1] == 12)
    cfg = json.loads(folder.config.read_text())
    assert cfg["recipe"]["snapshot_every"] == every


def test_no_snapshots_by_default_and_run_ids_unchanged(tmp_path):
    s = spec(None)
    # the run_id this spec had before the recipe had a snapshot_every field: old folders stay valid
    assert s.run_id == "tiny-random-s3-276f2d540c"
    assert spec(3).run_id != s.run_id  # a spec that asks for snapshots is another run
    assert get_recipe("retina").snapshot_every == 0
    run(s, tmp_path)
    assert snapshot_files(tmp_path, s) == {0: "step0.pt"}


def test_snapshot_every_is_a_recipe_override():
    assert get_recipe("retina", {"snapshot_every": "4"}).snapshot_every == 4
    assert spec(None, overrides={**OVR, "snapshot_every": "4"}).run_id == spec(4).run_id
    with pytest.raises(ConfigError, match="snapshot_every"):
        get_recipe("retina", {"snapshot_every": -1})
    with pytest.raises(ConfigError, match="snapshot_every"):
        get_recipe("retina", {"snapshot_every": "1.5"})


def _same_snapshots(a_runs, b_runs, s):
    a, b = RunFolder.of(a_runs, s.run_id), RunFolder.of(b_runs, s.run_id)
    assert snapshot_files(a_runs, s) == snapshot_files(b_runs, s)
    for (_, pa), (_, pb) in zip(a.snapshots(), b.snapshots()):
        wa, wb = weights(pa), weights(pb)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), pa.name


@pytest.mark.parametrize("stop_after", [6, 7])  # a snapshot at the stop step, or before it
def test_snapshots_survive_an_interrupted_and_resumed_run(tmp_path, stop_after):
    s = spec(3)
    full = run(s, tmp_path / "a")
    part = run(s, tmp_path / "b", max_steps_this_session=stop_after)
    assert part["status"] == "interrupted"
    done = [st for st in (0, 3, 6, 9, 12) if st <= stop_after]
    assert sorted(snapshot_files(tmp_path / "b", s)) == done
    assert run(s, tmp_path / "b")["metrics"] == full["metrics"]
    _same_snapshots(tmp_path / "a", tmp_path / "b", s)


def test_a_step_redone_after_a_crash_rewrites_its_snapshot(tmp_path):
    """A process killed after the step-6 snapshot but before the next checkpoint resumes from
    step 5 and writes step6.pt again: the finished run's files are those of an uninterrupted run."""
    s = spec(3)
    run(s, tmp_path / "a")
    b = RunFolder.of(tmp_path / "b", s.run_id)
    run(s, tmp_path / "b", max_steps_this_session=5)  # last.pt at step 5
    shutil.copy(b.training_state, tmp_path / "last5.pt")
    run(s, tmp_path / "b", max_steps_this_session=3)  # step6.pt written, last.pt at step 8
    assert b.snapshot(6).is_file()
    shutil.copy(tmp_path / "last5.pt", b.training_state)  # as if killed before checkpointing at 8
    stale = weights(b.snapshot(6))
    torch.save({"format": "transfusion-model", "state_dict": {k: v + 1 for k, v in stale.items()}},
               b.snapshot(6))  # what a crash of another trajectory could have left
    run(s, tmp_path / "b")
    _same_snapshots(tmp_path / "a", tmp_path / "b", s)


def test_snapshots_listing_ignores_other_files(tmp_path):
    folder = RunFolder(tmp_path / "r")
    assert folder.snapshots() == []
    folder.checkpoints.mkdir(parents=True)
    for name in ("step0.pt", "step10.pt", "step2.pt", "last.pt", ".step4.pt.ab12.tmp", "step3.pt.bak",
                 "stepx.pt"):
        (folder.checkpoints / name).write_bytes(b"")
    assert [(st, p.name) for st, p in folder.snapshots()] == [
        (0, "step0.pt"), (2, "step2.pt"), (10, "step10.pt")]
    assert folder.snapshot(7) == folder.checkpoints / "step7.pt"
    with pytest.raises(ConfigError):
        folder.snapshot(-1)
