"""Issue 15: BatchNorm-stable evaluation (recipe ``bn_recalibration_images``) and final metrics on a
held-out test split (RunSpec ``test_split``), both opt-in: at their defaults, run ids and run
results are what they were."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.errors import ConfigError  # noqa: E402
from transfusion.train import distributed as D  # noqa: E402
from transfusion.train import run_training  # noqa: E402
from transfusion.train.evaluation import recalibrated_batchnorm, recalibration_loader  # noqa: E402
from transfusion.train.loop import Components  # noqa: E402
from transfusion.train.recipes import get_recipe  # noqa: E402
from transfusion.train.spec import RunSpec  # noqa: E402

OVR = {"eval_every": 4, "log_every": 2, "checkpoint_every": 5, "eval_batch_size": 16}


class BNNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Dropout -> pooled linear head (dropout: recalibration must not
    draw from the RNG)."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(6, num_classes)
        self.num_classes, self.in_channels = num_classes, in_channels

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def components():
    return Components(build_model=lambda name, num_classes, in_channels=3, **_: BNNet(num_classes, in_channels),
                      initialize=train_fakes.initialize, load_dataset=train_fakes.load_dataset)


def spec(**kw):
    return train_fakes.tiny_spec(OVR, **kw)


def run(s, d, **kw):
    return run_training(s, d, components=components(), progress=False, **kw)


def rows(d: Path, kind: str) -> list[dict]:
    out = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("eval_s", "images_per_s")}
            for r in out if r["kind"] == kind]


def weights(d: Path) -> dict:
    return torch.load(d / "model_final.pt", weights_only=True)["state_dict"]


# ------------------------------------------------------------------ run ids at the defaults
def test_new_fields_at_their_defaults_keep_run_ids():
    # run ids computed before test_split / bn_recalibration_images existed
    assert spec().run_id == RunSpec(**{**spec().to_dict()}).run_id
    assert RunSpec(model="cbr_small", dataset="eyepacs",
                   data_root="synthetic").run_id == "cbr_small-random-s0-afa964f6ea"
    assert RunSpec(model="resnet50", dataset="chexpert", data_root="/d", init="transfer",
                   checkpoint="x.pt", seed=2, steps=100, overrides={"snapshot_every": 5}
                   ).run_id == "resnet50-transfer-s2-42dee9603a"
    assert "test_split" not in spec().to_dict()
    with_test = spec(test_split="test")
    assert with_test.run_id != spec().run_id and with_test.to_dict()["test_split"] == "test"
    assert RunSpec.from_dict(with_test.to_dict()) == with_test
    assert get_recipe("retina").bn_recalibration_images == 0
    with pytest.raises(ConfigError, match="bn_recalibration_images"):
        get_recipe("retina", {"bn_recalibration_images": -1})


# ------------------------------------------------------------------ BatchNorm recalibration
def test_recalibration_restores_the_training_state_and_is_deterministic():
    torch.manual_seed(0)
    model = BNNet(5, 3)
    model.train()
    with torch.no_grad():  # training-like running statistics
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8) * 2 + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = train_fakes.load_dataset("eyepacs", "x", "train", image_size=8, augment=False)
    loader = recalibration_loader(ds, 20, 8, seed=3)
    fwd = lambda m, x: m(x)  # noqa: E731
    rng = torch.get_rng_state()
    seen = []
    for _ in range(2):
        with recalibrated_batchnorm(model, loader, fwd, D.DistContext()):
            assert model.bn.momentum is None and int(model.bn.num_batches_tracked) == 3  # 8+8+4
            assert not model.training and not model.bn.training
            seen.append((model.bn.running_mean.clone(), model.bn.running_var.clone()))
        assert model.training and model.bn.training and model.bn.momentum == 0.1
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # no dropout drawn, no shuffling
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])
    # the cumulative average over the three batches of the fixed images, computed by hand
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(3))[:20].tolist()
    with torch.no_grad():
        z = [model.conv(torch.stack([ds[i][0] for i in idx[a:a + 8]])) for a in (0, 8, 16)]
    mean = sum(t.mean((0, 2, 3)) for t in z) / 3
    var = sum(t.var((0, 2, 3), unbiased=True) for t in z) / 3
    assert torch.allclose(seen[0][0], mean, atol=1e-6) and torch.allclose(seen[0][1], var, atol=1e-5)


def test_recalibration_does_nothing_without_images_or_batchnorm():
    model = train_fakes.TinyNet(5, 3)
    ds = train_fakes.load_dataset("eyepacs", "x", "train", image_size=8, augment=False)
    assert recalibration_loader(ds, 0, 8, seed=1) is None
    with recalibrated_batchnorm(model, recalibration_loader(ds, 8, 8, 1), None, D.DistContext()):
        pass  # no BatchNorm: forward is never called


def test_recalibrated_run_trains_the_same_and_evaluates_deterministically(tmp_path):
    off = spec()
    on = spec(overrides={**OVR, "bn_recalibration_images": 20})
    r_off, r_on = run(off, tmp_path / "off"), run(on, tmp_path / "on")
    d_off, d_on = tmp_path / "off" / off.run_id, tmp_path / "on" / on.run_id
    # the training is untouched: same losses, same final weights and BatchNorm buffers
    assert rows(d_off, "train") == rows(d_on, "train")
    w_off, w_on = weights(d_off), weights(d_on)
    assert all(torch.equal(w_off[k], w_on[k]) for k in w_off)
    # the evaluation uses other statistics, and the same ones every time
    assert rows(d_off, "eval") != rows(d_on, "eval")
    again = run(on, tmp_path / "again")
    assert rows(tmp_path / "again" / on.run_id, "eval") == rows(d_on, "eval")
    assert again["metrics"] == r_on["metrics"] and r_off["metrics"] != r_on["metrics"]
    cfg = json.loads((d_on / "config.json").read_text())
    assert cfg["recipe"]["bn_recalibration_images"] == 20


def test_recalibration_off_evaluates_with_the_training_statistics(tmp_path):
    """Option off (the default): the final metrics are those of model_final.pt as saved, its
    BatchNorm running statistics included, as before the option existed."""
    from transfusion.train.loop import compute_metrics, task_info

    s = spec()
    final = run(s, tmp_path)
    model = BNNet(5, 3)
    model.load_state_dict(weights(tmp_path / s.run_id))
    model.eval()
    val = train_fakes.load_dataset("eyepacs", "fake", "val", image_size=8, augment=False)
    with torch.no_grad():
        logits = model(val.images).float()
    expect = compute_metrics(task_info(val, "retina"), logits, val.targets, val.masks)
    assert {k: final["metrics"][k] for k in expect} == pytest.approx(expect, abs=1e-6)


def test_recalibration_without_batchnorm_changes_nothing(tmp_path):
    """Option off = the code path of before: TinyNet (no BatchNorm) with recalibration on equals
    the run without it, number for number (there is nothing to recalibrate)."""
    plain = run_training(spec(), tmp_path / "a", components=train_fakes.components(), progress=False)
    recal = run_training(spec(overrides={**OVR, "bn_recalibration_images": 16}), tmp_path / "b",
                         components=train_fakes.components(), progress=False)
    assert plain["metrics"] == recal["metrics"]


@pytest.mark.parametrize("stop_after", [5])
def test_recalibrated_run_resumes_exactly(tmp_path, stop_after):
    s = spec(overrides={**OVR, "bn_recalibration_images": 20}, test_split="test")
    full = run(s, tmp_path / "a")
    part = run(s, tmp_path / "b", max_steps_this_session=stop_after)
    assert part["status"] == "interrupted"
    resumed = run(s, tmp_path / "b")
    assert resumed["metrics"] == full["metrics"] and resumed["test"] == {
        **full["test"], "test_s": resumed["test"]["test_s"]}
    assert rows(tmp_path / "a" / s.run_id, "eval") == rows(tmp_path / "b" / s.run_id, "eval")


# ------------------------------------------------------------------ test split
def test_test_split_metrics_land_in_final_json(tmp_path):
    s = spec(test_split="test")
    final = run(s, tmp_path)
    d = tmp_path / s.run_id
    on_disk = json.loads((d / "final.json").read_text())
    assert on_disk == final
    test = final["test"]
    assert test["split"] == "test" and test["size"] == 40
    assert 0.0 <= test["auc_referable"] <= 1.0 and "eval_loss" in test and "kappa" in test
    assert test["auc_referable"] != final["metrics"]["auc_referable"]  # another set of images
    assert json.loads((d / "config.json").read_text())["data"]["test_size"] == 40
    kinds = {json.loads(x)["kind"] for x in (d / "metrics.jsonl").read_text().splitlines()}
    assert kinds == {"train", "eval"}  # the test metrics live in final.json only
    # the per-image outputs behind the test metrics: recomputing them gives final.json's numbers
    import numpy as np

    from transfusion.train.metrics import retina_metrics

    with np.load(d / "test_outputs.npz") as z:
        logits, targets = z["logits"], z["targets"]
    assert logits.shape == (40, 5) and targets.shape == (40,)
    assert retina_metrics(logits, targets)["auc_referable"] == pytest.approx(test["auc_referable"], abs=1e-12)
    # training and validation numbers are those of the run without a test split
    plain = run(spec(), tmp_path / "plain")
    assert plain["metrics"] == final["metrics"] and "test" not in plain
    assert not (tmp_path / "plain" / plain["run_id"] / "test_outputs.npz").exists()


def test_test_split_is_redone_when_the_run_died_before_final_json(tmp_path):
    s = spec(test_split="test", eval_limit=24)
    full = run(s, tmp_path / "a")
    assert full["test"]["size"] == 24  # eval_limit caps the test set as it caps the evaluation
    part = run(s, tmp_path / "b", max_steps_this_session=11)  # one step before the end
    assert part["status"] == "interrupted" and "test" not in part
    assert not (tmp_path / "b" / s.run_id / "final.json").exists()
    resumed = run(s, tmp_path / "b")
    strip = lambda t: {k: v for k, v in t.items() if k != "test_s"}  # noqa: E731
    assert strip(resumed["test"]) == strip(full["test"])


def test_empty_test_split_stops_before_training(tmp_path):
    def load(name, root, split, **kw):
        return train_fakes.load_dataset(name, root, split, **{**kw, "limit": 0 if split == "test" else kw.get("limit")})

    comps = Components(build_model=train_fakes.build_model, initialize=train_fakes.initialize,
                       load_dataset=load)
    s = spec(test_split="test")
    with pytest.raises(ConfigError, match="empty test set .split 'test'"):
        run_training(s, tmp_path, components=comps, progress=False)
    assert not (tmp_path / s.run_id / "checkpoints" / "step0.pt").exists()
