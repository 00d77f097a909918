import pytest

from transfusion.errors import ConfigError
from transfusion.experiments import EXPERIMENT_NAMES, experiment_module
from transfusion.experiments.config import PRESETS, ExperimentConfig, make_config, parse_pretrained


def test_all_eight_experiments_are_registered_with_help():
    assert EXPERIMENT_NAMES == ("performance", "representations", "layer-change", "feature-reuse",
                                "mean-var", "weight-transfusion", "slim", "gabor")
    for name in EXPERIMENT_NAMES:
        m = experiment_module(name)
        assert m.QUESTION.endswith("?") and m.WRITES and callable(m.plan) and callable(m.report)


def test_presets_and_overrides(tmp_path):
    cfg = make_config("performance", preset="demo", out=str(tmp_path / "r"), runs=str(tmp_path / "runs"))
    assert cfg.models == PRESETS["demo"].models and not cfg.models_given
    assert cfg.image_size == 32 and cfg.steps == 300 and cfg.threshold == 0.8
    assert cfg.seeds == (0, 1, 2) and cfg.batch_size == 32 and cfg.parallel_runs == 2
    cfg = make_config("performance", preset="demo", models=("CBR-Tiny",), seeds=(3,), steps=7,
                      out=str(tmp_path), runs=str(tmp_path))
    assert cfg.models == ("cbr_tiny",) and cfg.models_given and cfg.seeds == (3,)
    assert cfg.steps == 7 and cfg.eval_every == 7 and cfg.threads == 1
    slim = make_config("slim", preset="demo", out=str(tmp_path), runs=str(tmp_path))
    assert slim.steps == 300 and slim.seeds == (0, 1, 2) and slim.slim == "resnet50_narrow_slim"
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.out_dir.name == "performance"
    assert make_config("performance", small_data=5000, out=str(tmp_path)).out_dir.name == "performance-small5000"
    cfg = make_config("weight-transfusion", upto="conv1", out=str(tmp_path))
    assert cfg.out_dir.name == "weight-transfusion-upto-conv1"


def test_bad_settings_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="--data-dir"):
        make_config("performance", preset="paper")
    with pytest.raises(ConfigError, match="choose one of"):
        make_config("performance", preset="huge")
    with pytest.raises(ConfigError, match="does not exist"):
        make_config("performance", data_dir=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="--data-format"):
        make_config("performance", data_dir=str(tmp_path), data_format="chexpert")
    with pytest.raises(ConfigError, match="unknown model"):
        make_config("performance", models=("resnet51",))
    with pytest.raises(ConfigError, match="MODEL=PATH"):
        parse_pretrained(["resnet50"])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_pretrained([f"resnet50={tmp_path / 'missing.pth'}"])
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert parse_pretrained([f"ResNet-50={f}"]) == {"resnet50": str(f)}


def test_demo_experiments_share_one_recipe_so_they_share_runs(tmp_path):
    """Every demo experiment uses the same steps, eval cadence, threshold, seeds and pretraining,
    so the performance grid's random/transfer runs are also the speed experiments' arms (trained
    once) and the 20-minute budget holds."""
    from transfusion.experiments import EXPERIMENT_NAMES
    from transfusion.experiments.engine import pretrain_spec

    cfgs = [make_config(e, preset="demo", cache=str(tmp_path)) for e in EXPERIMENT_NAMES]
    for c in cfgs:
        assert (c.steps, c.eval_every, c.pretrain_steps, c.threshold, c.seeds) == (300, 50, 600, 0.8, (0, 1, 2))
        assert "0.8" in c.threshold_note
    assert len({pretrain_spec(c, "resnet50_narrow").run_id for c in cfgs}) == 1
    assert make_config("weight-transfusion", preset="demo", steps=300, threshold=0.7).threshold == 0.7


def test_snapshots_from_the_preset_reach_every_run_spec():
    """micro and demo runs keep model snapshots (feature-reuse's similarity over time); paper runs
    and pretraining runs do not, and a spec without them keeps its old run_id."""
    from transfusion.experiments.config import make_config, snapshot_every
    from transfusion.experiments.engine import training_spec

    assert make_config("performance", preset="micro").snapshot_every == 2
    assert make_config("performance", preset="demo").snapshot_every == 75
    assert make_config("mean-var", preset="demo", steps=800).snapshot_every == 200
    assert make_config("performance", preset="demo", snapshots=0).snapshot_every == 0
    assert [snapshot_every(10, 4), snapshot_every(3, 5), snapshot_every(100, 0)] == [3, 1, 0]
    kw = dict(model="cbr_tiny", task="retina", data={"dataset": "eyepacs", "root": "/x"},
              init="random", seed=0, steps=4, eval_every=2, image_size=32, batch_size=4)
    assert training_spec(**kw).run_id == "cbr_tiny-random-s0-734b8685ee"  # as before snapshots
    assert training_spec(**kw, snapshot_every=2).overrides["snapshot_every"] == 2
    with pytest.raises(ConfigError, match="snapshots"):
        make_config("performance", preset="micro", snapshots=-1)


def test_demo_recipe_overrides_reach_the_run_specs(tmp_path):
    """The demo's cosine schedule reaches every medical run; the narrow ResNets' learning rate
    only theirs; pretraining runs keep the pretraining recipe."""
    from transfusion.experiments import experiment_module
    from transfusion.experiments.engine import plan_experiment, pretrain_spec

    cfg = make_config("performance", preset="demo", cache=str(tmp_path), runs=str(tmp_path / "runs"))
    fake = {m: {"path": "/w.pt", "source": "test"} for m in cfg.models}
    planned = plan_experiment(cfg, experiment_module("performance"),
                              {"dataset": "eyepacs", "root": "/data"}, fake)
    for p in planned:
        o = p.spec.overrides
        assert o["schedule"] == "cosine" and o["bn_recalibration_images"] == 256
        assert p.spec.test_split == "test"
        assert o.get("lr") == (0.006 if p.role["model"] == "resnet50_narrow" else None)
    assert "schedule" not in pretrain_spec(cfg, "cbr_tiny").overrides


def test_every_preset_field_reaches_the_config_through_one_copy():
    """Issue 13: make_config copied 19 preset fields by hand; preset_values copies every field a
    Preset shares with ExperimentConfig, so a new preset setting reaches plan.json by itself."""
    import dataclasses

    from transfusion.experiments.config import Preset, preset_values

    preset = {f.name for f in dataclasses.fields(Preset)}
    shared = preset & {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert preset - shared == {"name", "per_experiment"}
    p = PRESETS["demo"]
    cfg = make_config("performance", preset="demo")
    for k in shared - {"steps", "image_size", "eval_every"}:
        assert getattr(cfg, k) == getattr(p, k), k
    assert (cfg.steps, cfg.image_size) == (p.steps["retina"], p.image_size["retina"])
    values = preset_values(p, "chexpert")
    values["model_overrides"]["resnet50_narrow"]["lr"] = 1.0  # a copy: the preset is unchanged
    assert p.model_overrides["resnet50_narrow"]["lr"] == 0.006
