"""Run folders: one writer at a time, no temp files left behind, no training state kept after the
end unless asked, and files with the umask's mode (issue 14)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))
sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402
from hostile_helpers import assert_one_error_line  # noqa: E402

from transfusion.run_lock import RunInUseError, RunLock  # noqa: E402
from transfusion.train.spec import RunSpec  # noqa: E402
from transfusion.utils import atomic_write_bytes, is_temp_file, remove_stale_temp_files  # noqa: E402


def spec():
    return RunSpec(model="tiny", dataset="eyepacs", data_root="fake", recipe="retina", steps=6,
                   image_size=8, batch_size=8, seed=3,
                   overrides={"eval_every": 3, "log_every": 2, "checkpoint_every": 2})


def components():
    return train_fakes.components()

TRAIN = ["train", "--model", "cbr_tiny", "--dataset", "eyepacs", "--data-root", "synthetic",
         "--synthetic-images", "96", "--image-size", "32", "--batch-size", "8", "--steps", "40",
         "--eval-every", "20", "--seed", "3"]


def _cli(args, env):
    return subprocess.Popen([sys.executable, "-c", "from transfusion.cli import main; main()", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_identical_train_commands_leave_one_metrics_row_per_step(tmp_path):
    # issue 14: two identical commands on one --runs folder interleaved metrics.jsonl (rows
    # doubled and out of order, a step-0 row lost)
    env = dict(os.environ, TRANSFUSION_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    runs = tmp_path / "runs"
    warm = subprocess.run([sys.executable, "-c", "from transfusion.cli import main; main()",
                           *TRAIN, "--runs-dir", str(tmp_path / "warm"), "--steps", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr  # the synthetic data is made once, before the race
    first = _cli([*TRAIN, "--runs-dir", str(runs)], env)
    time.sleep(0.3)
    second = _cli([*TRAIN, "--runs-dir", str(runs)], env)
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0, err1
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for kind in ("train", "eval"):
        steps = [r["step"] for r in rows if r["kind"] == kind]
        assert steps == sorted(set(steps)), (kind, steps)
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 20, 40]
    if second.returncode != 0:  # it found the folder in use: one line naming the other process
        assert_one_error_line(second.returncode, err2, "in use by process", str(first.pid))


def test_lock_names_the_holder_and_is_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from transfusion.run_lock import RunLock; "
         f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=f"in use by process {holder.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # a killed holder's lock is gone, its .lock file does not matter
        pass


def test_stale_temp_files_are_removed_when_a_run_starts_again(tmp_path):
    from transfusion.train import run_training

    s = spec()
    part = run_training(s, tmp_path, components=components(), progress=False,
                        max_steps_this_session=2)
    assert part["status"] == "interrupted"
    run_dir = tmp_path / s.run_id
    stale = [run_dir / ".model_final.pt.k3j9x1.tmp", run_dir / "checkpoints" / ".last.pt.a8Zq_2.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)  # what a SIGKILL during an atomic write leaves
    keep = run_dir / "notes.tmp"  # not ours: no leading dot / random part
    keep.write_text("mine")
    final = run_training(s, tmp_path, components=components(), progress=False)
    assert final["status"] == "finished"
    assert not any(p.exists() for p in stale) and keep.exists()


def test_training_state_is_deleted_after_the_end_unless_kept(tmp_path):
    from transfusion.train import run_training

    s = spec()
    run_training(s, tmp_path / "a", components=components(), progress=False)
    assert (tmp_path / "a" / s.run_id / "model_final.pt").is_file()
    assert not (tmp_path / "a" / s.run_id / "checkpoints" / "last.pt").exists()
    run_training(s, tmp_path / "b", components=components(), progress=False,
                 keep_training_state=True)
    assert (tmp_path / "b" / s.run_id / "checkpoints" / "last.pt").is_file()


def test_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        from transfusion.utils import atomic_torch_save

        atomic_torch_save(tmp_path / "b.pt", {"w": torch.zeros(1)})
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_temp_file_naming_is_recognised():
    assert is_temp_file(".model_final.pt.k3j9x1.tmp")
    assert not is_temp_file("notes.tmp") and not is_temp_file(".hidden.tmp")
    assert remove_stale_temp_files("/nonexistent-folder") == []
