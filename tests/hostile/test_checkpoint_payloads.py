"""Security: no file handed to transfusion can run code when it is read."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfusion.errors import CheckpointError
from transfusion.initializers import save_model_checkpoint
from transfusion.models import build_model

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))
sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402
from hostile_helpers import assert_one_error_line, write_payload_file  # noqa: E402

PACKAGE = Path(__file__).parent.parent.parent / "transfusion"


def test_no_unsafe_torch_load_in_the_package():
    proc = subprocess.run(["grep", "-rn", "weights_only=False", str(PACKAGE)],
                          capture_output=True, text=True)
    assert proc.stdout == "", proc.stdout


def test_compare_refuses_a_code_payload_and_runs_nothing(tmp_path, cli):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    write_payload_file(evil, marker)
    good = tmp_path / "good.pt"
    save_model_checkpoint(good, build_model("cbr_tiny", 5), "cbr_tiny")
    code, out, err = cli("compare", evil, good, "--images", 4, "--cache", tmp_path / "cache")
    assert not marker.exists()
    assert_one_error_line(code, err, "evil.pt", "code")


def test_analysis_loader_refuses_a_code_payload(tmp_path):
    from transfusion.analysis.similarity import load_checkpoint_model

    marker = tmp_path / "PWNED"
    write_payload_file(tmp_path / "model_final.pt", marker)
    with pytest.raises(CheckpointError, match="nothing in it was run"):
        load_checkpoint_model(tmp_path / "model_final.pt")
    assert not marker.exists()


def test_pretrained_file_with_a_payload_is_refused(tmp_path):
    from transfusion.initializers import load_state_dict_file

    marker = tmp_path / "PWNED"
    write_payload_file(tmp_path / "resnet.pth", marker)
    with pytest.raises(CheckpointError):
        load_state_dict_file(tmp_path / "resnet.pth")
    assert not marker.exists()


def _spec(**kw):
    from transfusion.train.spec import RunSpec

    base = dict(model="tiny", dataset="eyepacs", data_root="fake", recipe="retina", steps=6,
                image_size=8, batch_size=8, seed=1,
                overrides={"eval_every": 3, "log_every": 1, "checkpoint_every": 2})
    base.update(kw)
    return RunSpec(**base)


def test_resume_refuses_a_planted_training_checkpoint(tmp_path):
    from transfusion.train import run_training

    s = _spec()
    part = run_training(s, tmp_path, components=train_fakes.components(), progress=False,
                        max_steps_this_session=2)
    assert part["status"] == "interrupted"
    last = tmp_path / s.run_id / "checkpoints" / "last.pt"
    marker = tmp_path / "PWNED"
    write_payload_file(last, marker)
    with pytest.raises(CheckpointError, match="nothing in it was run"):
        run_training(s, tmp_path, components=train_fakes.components(), progress=False)
    assert not marker.exists()


def test_training_state_is_stored_in_weights_only_form(tmp_path):
    from transfusion.train import run_training

    s = _spec()
    run_training(s, tmp_path, components=train_fakes.components(), progress=False,
                 max_steps_this_session=2)
    st = torch.load(tmp_path / s.run_id / "checkpoints" / "last.pt", weights_only=True)
    assert st["step"] == 2 and "numpy" in st["rng"][0] and "python" in st["rng"][0]


def test_compare_path_honours_inception_transform_input(tmp_path):
    from transfusion.analysis.similarity import load_checkpoint_model

    m = build_model("inception_v3", 5)
    m.transform_input = True
    save_model_checkpoint(tmp_path / "inc.pt", m, "inception_v3")
    loaded, header = load_checkpoint_model(tmp_path / "inc.pt")
    assert loaded.transform_input is True and header["model_name"] == "inception_v3"
