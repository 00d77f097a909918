import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.cli import app  # noqa: E402

runner = CliRunner()
FLAGS = ["--model", "tiny", "--dataset", "eyepacs", "--data-root", "fake", "--steps", "6",
         "--image-size", "8", "--batch-size", "8", "--eval-every", "3", "--set", "log_every=3"]


@pytest.fixture
def fakes(monkeypatch):
    import transfusion.train.loop as L

    monkeypatch.setattr(L, "default_components", train_fakes.components)


def test_train_stop_resume_skip(tmp_path, fakes):
    args = ["train", *FLAGS, "--runs-dir", str(tmp_path)]
    r = runner.invoke(app, [*args, "--max-steps-this-session", "2"])
    assert r.exit_code == 0, r.output
    assert "Rerun the same command to resume" in r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "finished" in r.output, r.output
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "final.json").read_text())["steps"] == 6
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "finished" in r.output
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(json.loads((run_dir / "config.json").read_text())["spec"]))
    r = runner.invoke(app, ["train", "--spec", str(spec_file), "--dry-run"])
    assert json.loads(r.output)["run_id"] == run_dir.name


def test_train_errors_are_messages(tmp_path):
    r = runner.invoke(app, ["train", "--model", "tiny"])
    assert r.exit_code == 2 and "missing --dataset, --data-root" in r.output
    r = runner.invoke(app, ["train", *FLAGS, "--set", "lr"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_pretrain_writes_a_model_checkpoint(tmp_path, fakes):
    out = tmp_path / "w" / "tiny_pretrained.pt"
    r = runner.invoke(app, ["pretrain", "--model", "tiny", "--source", "fake", "--steps", "3",
                            "--image-size", "8", "--batch-size", "8", "--runs-dir", str(tmp_path / "runs"),
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    import torch

    ck = torch.load(out, weights_only=False)
    assert ck["format"] == "transfusion-model" and ck["num_classes"] == 4
    (run_dir,) = (tmp_path / "runs").iterdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["recipe"]["name"] == "pretrain" and cfg["task"]["kind"] == "multiclass"
