import pytest

from transfusion.errors import ConfigError
from transfusion.train.recipes import get_recipe, lr_at, lr_factor


def test_paper_recipes():
    r = get_recipe("retina")
    assert (r.optimizer, r.lr, r.batch_size, r.image_size, r.schedule) == ("adam", 1e-3, 8, 587, "constant")
    c = get_recipe("chexpert")
    assert (c.optimizer, c.momentum, c.batch_size, c.image_size) == ("sgd", 0.9, 32, 224)
    assert c.lr == pytest.approx(0.1 * 32 / 256)
    assert get_recipe("pretrain").optimizer == "sgd"


def test_chexpert_warmup_and_steps():
    c = get_recipe("chexpert")
    spe = 1000 / 32  # 1000 training images, batch 32 -> 31.25 steps per epoch
    warm = 5 * spe
    assert lr_at(0, c, spe) == 0.0
    assert lr_at(int(warm // 2), c, spe) == pytest.approx(c.lr * int(warm // 2) / warm)
    assert lr_at(156, c, spe) == pytest.approx(c.lr * 156 / warm)
    assert lr_at(157, c, spe) == pytest.approx(c.lr)  # 157 >= 156.25: warm-up over
    e30, e60, e90 = 30 * spe, 60 * spe, 90 * spe  # 937.5, 1875, 2812.5
    assert lr_at(937, c, spe) == pytest.approx(c.lr)
    assert lr_at(938, c, spe) == pytest.approx(c.lr * 0.1)
    assert lr_at(1875, c, spe) == pytest.approx(c.lr * 0.01)
    assert lr_at(2813, c, spe) == pytest.approx(c.lr * 0.001)
    assert lr_at(10**6, c, spe) == pytest.approx(c.lr * 0.001)
    assert e30 < e60 < e90


def test_cosine_schedule_falls_from_the_full_rate_to_zero_at_the_last_step():
    import math

    r = get_recipe("retina", {"schedule": "cosine", "steps": 300})
    assert lr_factor(0, r, 10.0) == 1.0 and lr_factor(150, r, 10.0) == 0.5
    assert lr_factor(300, r, 10.0) == 0.0 and lr_factor(10**5, r, 10.0) == 0.0
    assert lr_factor(75, r, 10.0) == (1 + math.cos(math.pi / 4)) / 2
    f = [lr_factor(s, r, 10.0) for s in range(301)]
    assert all(a > b for a, b in zip(f, f[1:]))  # strictly falling
    assert lr_at(150, r, 10.0) == 0.5 * r.lr


def test_constant_schedule():
    r = get_recipe("retina")
    assert all(lr_factor(s, r, 10.0) == 1.0 for s in (0, 1, 10**5))


def test_overrides_and_linear_scaling():
    c = get_recipe("chexpert", {"batch_size": "64", "image_size": 32, "steps": 10, "augment": "false",
                                "weight_decay": 0, "decay_epochs": "1,2"})
    assert c.batch_size == 64 and c.image_size == 32 and c.steps == 10 and c.augment is False
    assert c.lr == pytest.approx(0.1 * 64 / 256) and c.decay_epochs == (1.0, 2.0)
    c2 = get_recipe("chexpert", {"lr": 0.5, "batch_size": 64})
    assert c2.lr == 0.5 and c2.lr_per_256 is None


def test_bad_overrides():
    with pytest.raises(ConfigError, match="unknown recipe field"):
        get_recipe("retina", {"learning_rate": 1})
    with pytest.raises(ConfigError, match="not a int"):
        get_recipe("retina", {"steps": "ten"})
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("imagenet")
    with pytest.raises(ConfigError, match="amp"):
        get_recipe("retina", {"amp": "fp8"})
