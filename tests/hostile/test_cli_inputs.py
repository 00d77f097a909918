"""Command-line values that used to be silently replaced, or crashed with a traceback: each is
one `error:` line that says what to give instead, before any work."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hostile_helpers import assert_one_error_line  # noqa: E402

from transfusion.initializers import save_model_checkpoint  # noqa: E402
from transfusion.models import build_model  # noqa: E402
from transfusion.train.recipes import get_recipe  # noqa: E402

RUN = ("run", "performance", "--preset", "micro")


@pytest.mark.parametrize("args, needle", [
    (("--image-size", "0"), "--image-size"),
    (("--batch-size", "0"), "--batch-size"),
    (("--seeds", ""), "--seeds"),
    (("--seeds", "0,0"), "repeats seed"),
    (("--steps", "0"), "--steps"),
    (("--threads", "-1"), "--threads"),
    (("--device", "tpu"), "tpu"),
])
def test_run_options_are_checked(tmp_path, cli, args, needle):
    code, out, err = cli(*RUN, "--out", tmp_path / "r", "--runs", tmp_path / "runs",
                         "--cache", tmp_path / "c", *args)
    assert_one_error_line(code, err, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


TRAIN = ("train", "--model", "cbr_tiny", "--dataset", "eyepacs", "--data-root", "synthetic",
         "--steps", "1")


@pytest.mark.parametrize("args, needle", [
    (("--image-size", "0"), "--image-size"),
    (("--batch-size", "0"), "--batch-size"),
    (("--workers", "-1"), "--workers"),
    (("--device", "tpu"), "tpu"),
    (("--set", "lr=nan"), "lr"),
    (("--set", "weight_decay=-1"), "weight_decay"),
    (("--set", "momentum=-1"), "momentum"),
    (("--image-size", "8"), "at least 31x31"),
    (("--image-size", "100000"), "--image-size"),
    (("--batch-size", "100000", "--image-size", "256"), "GiB"),
])
def test_train_options_are_checked(tmp_path, cli, args, needle, monkeypatch):
    monkeypatch.setenv("TRANSFUSION_CACHE", str(tmp_path / "cache"))
    code, out, err = cli(*TRAIN, "--runs-dir", tmp_path / "runs", *args)
    assert_one_error_line(code, err, needle)
    assert not (tmp_path / "cache").exists()  # refused before any data was made


def test_inception_minimum_size_is_stated(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("TRANSFUSION_CACHE", str(tmp_path / "cache"))
    code, out, err = cli("train", "--model", "inception_v3", "--dataset", "eyepacs", "--data-root",
                         "synthetic", "--image-size", "32", "--runs-dir", tmp_path / "runs")
    assert_one_error_line(code, err, "at least 75x75")


def test_cuda_device_without_cuda(tmp_path, cli):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    code, out, err = cli(*TRAIN, "--runs-dir", tmp_path / "runs", "--device", "cuda")
    assert_one_error_line(code, err, "CUDA")


def test_unwritable_output_folders_fail_before_any_work(tmp_path, cli, monkeypatch):
    blocker = tmp_path / "a-file"  # a folder below a file cannot be created, even by root
    blocker.write_text("x")
    monkeypatch.setenv("TRANSFUSION_CACHE", str(tmp_path / "cache"))
    code, _, err = cli(*TRAIN, "--runs-dir", blocker / "runs")
    assert_one_error_line(code, err, "--runs-dir", "cannot be written")
    code, _, err = cli(*RUN, "--out", blocker / "out", "--runs", tmp_path / "runs",
                       "--cache", tmp_path / "c")
    assert_one_error_line(code, err, "--out")
    code, _, err = cli(*RUN, "--runs", blocker / "runs", "--out", tmp_path / "out",
                       "--cache", tmp_path / "c")
    assert_one_error_line(code, err, "--runs")
    code, _, err = cli("pretrain", "--model", "cbr_tiny", "--out", blocker / "x.pt",
                       "--runs-dir", tmp_path / "runs", "--steps", "1")
    assert_one_error_line(code, err, "--out")
    code, _, err = cli("data", "make", "fundus", "--out", blocker / "d", "--n", "4")
    assert_one_error_line(code, err, "--out")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "c").exists()


def test_float_recipe_fields_take_floats():
    assert get_recipe("chexpert", {"warmup_epochs": "0.5"}).warmup_epochs == 0.5


def _ckpt(path, name="cbr_tiny", **kw):
    save_model_checkpoint(path, build_model(name, 5, **kw), name)
    return path


def test_compare_bad_files_are_one_line(tmp_path, cli):
    good = _ckpt(tmp_path / "good.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    gray = _ckpt(tmp_path / "gray.pt", in_channels=1)
    st = torch.load(good, weights_only=True)
    st["state_dict"]["cbr1.conv.weight"] = torch.zeros(3, 3, 1, 1) if "cbr1.conv.weight" in \
        st["state_dict"] else None
    key = next(k for k in st["state_dict"] if k.endswith("weight"))
    st["state_dict"][key] = torch.zeros(2, 2)
    st["state_dict"] = {k: v for k, v in st["state_dict"].items() if v is not None}
    wrong = tmp_path / "wrong.pt"
    torch.save(st, wrong)
    for bad, needle in ((text, "notes.pt"), (cut, "cut.pt"), (wrong, "wrong.pt"),
                        (gray, "channel")):
        code, out, err = cli("compare", bad, good, "--images", 4, "--cache", tmp_path / "c")
        assert_one_error_line(code, err, needle)


def test_nan_weights_in_a_pretrained_file(tmp_path):
    from transfusion.errors import CheckpointError
    from transfusion.initializers import initialize

    m = build_model("cbr_tiny", 5)
    sd = m.state_dict()
    next(v for v in sd.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        initialize(build_model("cbr_tiny", 5), "transfer", model_name="cbr_tiny",
                   checkpoint=tmp_path / "nan.pth")


def test_a_limit_larger_than_the_split_is_refused(tmp_path, cli, monkeypatch):
    # issue 14: --small-data 100000 on a 112-image set reported "100000 training images"
    monkeypatch.setenv("TRANSFUSION_CACHE", str(tmp_path / "cache"))
    code, out, err = cli(*TRAIN, "--synthetic-images", "96", "--image-size", "32",
                         "--limit", "100000", "--runs-dir", tmp_path / "runs")
    assert_one_error_line(code, err, "asked for 100000 images", "has only")
