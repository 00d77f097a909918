"""The whole path with the other packages' real code: synthetic fundus images in the EyePACS
layout (transfusion.data), CBR-Tiny (transfusion.models), the loop; stopped and resumed vs uninterrupted."""
import json
import math

import pytest
import torch

pytest.importorskip("transfusion.models")
pytest.importorskip("transfusion.data.synthetic")

from transfusion.train import run_training  # noqa: E402
from transfusion.train.spec import RunSpec  # noqa: E402


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


@pytest.mark.slow
def test_synthetic_fundus_cbr_tiny_resume_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFUSION_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)
    spec = RunSpec(model="cbr_tiny", dataset="eyepacs", data_root="synthetic", synthetic_images=60,
                   steps=4, image_size=32, batch_size=8, seed=0, eval_split="train", eval_limit=24,
                   overrides={"eval_every": 2, "log_every": 1, "checkpoint_every": 100})
    full = run_training(spec, tmp_path / "a", progress=False)
    d = tmp_path / "a" / spec.run_id
    for f in ("config.json", "init_summary.json", "metrics.jsonl", "metrics.csv", "final.json",
              "model_final.pt", "checkpoints/step0.pt"):
        assert (d / f).is_file(), f
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["data"]["train"]["dataset"] == "eyepacs" and cfg["recipe"]["augment"] is True
    assert json.loads((d / "init_summary.json").read_text())["method"] == "random"
    part = run_training(spec, tmp_path / "b", progress=False, max_steps_this_session=3)
    assert part["status"] == "interrupted"
    resumed = run_training(spec, tmp_path / "b", progress=False)
    assert same(resumed["metrics"], full["metrics"]), (resumed["metrics"], full["metrics"])


def test_decode_cache_gives_the_same_run(tmp_path, monkeypatch):
    """TRANSFUSION_DECODE_CACHE=1 (the demo's): splits decoded once into the machine cache; the
    images are the same arrays, so the run's numbers (and its id) are those of the uncached run."""
    from transfusion.train.data_stream import DECODE_CACHE_ENV

    monkeypatch.setenv("TRANSFUSION_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    spec = RunSpec(model="cbr_tiny", dataset="eyepacs", data_root="synthetic", synthetic_images=60,
                   steps=3, image_size=32, batch_size=8, seed=0, eval_split="train", eval_limit=8,
                   test_split="test", overrides={"eval_every": 3, "bn_recalibration_images": 8})
    plain = run_training(spec, tmp_path / "a", progress=False)
    monkeypatch.setenv(DECODE_CACHE_ENV, "1")
    cached = run_training(spec, tmp_path / "b", progress=False)
    assert list((tmp_path / "cache" / "decoded").glob("eyepacs-*.npy"))  # the cache was used
    assert same(cached["metrics"], plain["metrics"]) and same(cached["test"], {**plain["test"],
                                                                              "test_s": cached["test"]["test_s"]})
