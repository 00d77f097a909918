"""Each initialisation checked by what it must do (docs/paper.md, "Initialisations")."""
import json
import math

import pytest
import torch

from transfusion.errors import ConfigError
from transfusion.initializers import INIT_METHODS, gabor_bank, initialize
from transfusion.models import build_model


@pytest.fixture(scope="module")
def narrow_file(tmp_path_factory, fake_pretrained):
    model = fake_pretrained("resnet50_narrow")
    path = tmp_path_factory.mktemp("ckpt") / "resnet50_narrow_imagenet.pth"
    torch.save(model.state_dict(), path)  # torchvision layout: a plain state_dict
    return path, model.state_dict()


def sd(model):
    return model.state_dict()


def test_methods_listed():
    assert INIT_METHODS == ("random", "transfer", "mean_var", "transfuse", "slim", "gabor")


def test_random_is_seeded():
    a, b, c = (build_model("cbr_tiny", 5) for _ in range(3))
    s = initialize(a, "random", model_name="cbr_tiny", seed=3)
    initialize(b, "random", model_name="cbr_tiny", seed=3)
    initialize(c, "random", model_name="cbr_tiny", seed=4)
    for k in sd(a):
        torch.testing.assert_close(sd(a)[k], sd(b)[k], rtol=0, atol=0)
    assert not torch.equal(sd(a)["cbr2.conv.weight"], sd(c)["cbr2.conv.weight"])
    assert set(s["tensors"].values()) == {"random"}
    json.dumps(s)
    w = sd(a)["cbr2.conv.weight"]  # He init, fan_out: std sqrt(2 / (64 * 5 * 5))
    assert abs(float(w.std()) / math.sqrt(2 / (64 * 25)) - 1) < 0.05


def test_transfer_copies_everything_but_the_head(narrow_file):
    path, src = narrow_file
    model = build_model("resnet50_narrow", 5)
    s = initialize(model, "transfer", model_name="ResNet50-narrow", checkpoint=path)
    for k, v in sd(model).items():
        if k.startswith("fc."):
            assert s["tensors"][k] == "random"
        else:
            assert torch.equal(v, src[k]), k
            assert s["tensors"][k] == "checkpoint"
    assert sd(model)["fc.weight"].shape == (5, 512)
    assert s["checkpoint"]["sha256_16"] and s["head"]["keys"] == ["fc.weight", "fc.bias"]
    json.dumps(s)


def test_head_is_fresh_even_with_the_same_number_of_classes(narrow_file):
    path, src = narrow_file
    model = build_model("resnet50_narrow", 1000)
    initialize(model, "transfer", model_name="resnet50_narrow", checkpoint=path)
    assert not torch.equal(sd(model)["fc.weight"], src["fc.weight"])


def test_transfuse_block2(narrow_file):
    path, src = narrow_file
    models = []
    for seed in (0, 1):
        model = build_model("resnet50_narrow", 5)
        s = initialize(model, "transfuse", model_name="resnet50_narrow", checkpoint=path,
                       upto="block2", seed=seed)
        models.append(model)
        assert s["stages"]["block2"] == {"checkpoint": len(model.stage_keys("block2"))}
        assert s["stages"]["block3"] == {"random": len(model.stage_keys("block3"))}
    a, b = (sd(m) for m in models)
    below = [k for s in ("conv1", "block1", "block2") for k in models[0].stage_keys(s)]
    above = [k for s in ("block3", "block4") for k in models[0].stage_keys(s)]
    for k in below:  # bit for bit, BN included
        assert torch.equal(a[k], src[k]) and torch.equal(b[k], src[k]), k
    for k in above:
        if k.endswith(("conv1.weight", "conv2.weight", "conv3.weight")):
            assert not torch.equal(a[k], src[k]) and not torch.equal(a[k], b[k]), k
        if k.endswith("running_var"):  # BN above the cut is fresh: identity statistics
            assert torch.equal(a[k], torch.ones_like(a[k]))
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


def test_transfuse_needs_a_stage_name(narrow_file):
    path, _ = narrow_file
    with pytest.raises(ConfigError, match="conv1, block1, block2, block3, block4"):
        initialize(build_model("resnet50_narrow", 5), "transfuse", model_name="resnet50_narrow",
                   checkpoint=path, upto="layer2")


def test_transfuse_cbr_by_stage_name(tmp_path, fake_pretrained):
    src = fake_pretrained("cbr_tiny", 10)
    path = tmp_path / "cbr_tiny.pth"
    torch.save(src.state_dict(), path)
    model = build_model("cbr_tiny", 5)
    initialize(model, "transfuse", model_name="cbr_tiny", checkpoint=path, upto="cbr1")
    assert torch.equal(sd(model)["cbr1.conv.weight"], src.state_dict()["cbr1.conv.weight"])
    assert torch.equal(sd(model)["cbr1.bn.running_mean"], src.state_dict()["cbr1.bn.running_mean"])
    assert not torch.equal(sd(model)["cbr2.conv.weight"], src.state_dict()["cbr2.conv.weight"])


def test_mean_var(narrow_file):
    path, src = narrow_file
    model = build_model("resnet50_narrow", 5)
    s = initialize(model, "mean_var", model_name="resnet50_narrow", checkpoint=path, seed=7)
    got = sd(model)
    n_checked = 0
    for k, v in got.items():
        source = s["tensors"][k]
        if k.startswith("fc."):
            assert source == "random"
        elif ".bn" in k or k.startswith("bn") or "downsample.1" in k:
            assert source == "reset", k
            leaf = k.rsplit(".", 1)[1]
            expected = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0,
                        "num_batches_tracked": 0}[leaf]
            if leaf == "weight" and k.endswith(".bn3.weight"):
                expected = 0.0  # the architecture's own init: resnet50_narrow is zero_init_residual
            assert torch.all(v == expected), k
        else:
            assert source == "mean_var", k
            ref, draw = src[k].double().flatten(), v.double().flatten()
            n = ref.numel()
            sd_ref = float(ref.std())
            # sampling error: mean +- 5 sd/sqrt(n), variance +- 5 sqrt(2/n) relative
            assert abs(float(draw.mean() - ref.mean())) < 5 * sd_ref / math.sqrt(n), k
            assert abs(float(draw.var()) / sd_ref ** 2 - 1) < 5 * math.sqrt(2 / n), k
            # the features are not the source's: uncorrelated with it
            corr = float(torch.corrcoef(torch.stack([ref, draw]))[0, 1])
            assert abs(corr) < 5 / math.sqrt(n), k
            n_checked += 1
    assert n_checked == 53  # every conv of ResNet50's layout


def slim_copies_up_to_block2(name, path, src):
    """(model, summary, state) of a slim init of ``name`` from ``path``, after checking that
    conv1..block2 are the source's tensors."""
    model = build_model(name, 5)
    s = initialize(model, "slim", model_name=name, checkpoint=path)
    got = sd(model)
    for stage in ("conv1", "block1", "block2"):
        for k in model.stage_keys(stage):
            assert torch.equal(got[k], src[k]), k
    return model, s, got


def test_slim_takes_resnet50_up_to_block2(resnet50_file):
    path, src = resnet50_file
    model, s, got = slim_copies_up_to_block2("resnet50_slim", path, src)
    assert got["layer3.0.conv1.weight"].shape == (128, 512, 1, 1)
    assert got["layer4.2.conv3.weight"].shape == (1024, 256, 1, 1)
    assert got["fc.weight"].shape == (5, 1024)
    assert s["stages"]["block3"] == {"random": len(model.stage_keys("block3"))}
    with pytest.raises(ConfigError, match="resnet50_slim"):
        initialize(build_model("resnet50_narrow", 5), "slim", model_name="resnet50_narrow",
                   checkpoint=path)


def test_narrow_slim_takes_the_narrow_resnet_up_to_block2(tmp_path):
    """The CPU demo's slim: resnet50_narrow_slim takes resnet50_narrow's conv1..block2, with
    block3-4 at half the narrow widths and random."""
    from transfusion.models import SLIM_SOURCE

    from .conftest import make_fake_pretrained

    assert SLIM_SOURCE == {"resnet50_slim": "resnet50", "resnet50_narrow_slim": "resnet50_narrow"}
    src_model = make_fake_pretrained("resnet50_narrow")
    path = tmp_path / "narrow.pth"
    torch.save(src_model.state_dict(), path)
    model, s, got = slim_copies_up_to_block2("resnet50_narrow_slim", path, src_model.state_dict())
    assert got["layer3.0.conv1.weight"].shape == (32, 128, 1, 1)  # narrow block3 at half width
    assert got["fc.weight"].shape == (5, 256)
    assert s["stages"]["block3"] == {"random": len(model.stage_keys("block3"))}
    assert s["stages"]["block4"] == {"random": len(model.stage_keys("block4"))}


def _dominant_orientation(f):
    """Orientation (mod pi) of the peak of the filter's zero-padded spectrum."""
    spec = torch.fft.fftshift(torch.fft.fft2(f.double(), s=(64, 64))).abs()
    iy, ix = divmod(int(spec.argmax()), 64)
    return math.atan2(iy - 32, ix - 32) % math.pi


def test_gabor_bank_is_gabor_shaped():
    bank, params = gabor_bank(64, 3, 7)
    assert bank.shape == (64, 3, 7, 7) and len(params) == 64
    assert len({p["theta"] for p in params}) == 8 and len({p["wavelength"] for p in params}) == 4
    for f, p in zip(bank, params):
        assert torch.equal(f[0], f[1]) and torch.equal(f[1], f[2])  # luminance filter
        g = f[0].double()
        assert abs(float(g.sum())) < 1e-5 and abs(float(f.norm()) - 1) < 1e-5
        rotated = torch.flip(g, dims=(0, 1))  # g(-x, -y)
        if p["phase"] == 0:
            torch.testing.assert_close(rotated, g, atol=1e-6, rtol=0)     # even: bar
        else:
            torch.testing.assert_close(rotated, -g, atol=1e-6, rtol=0)    # odd: edge
        if p["wavelength"] < 4:  # well resolved: the spectrum peaks along theta
            diff = abs(_dominant_orientation(g) - p["theta"]) % math.pi
            assert min(diff, math.pi - diff) < 0.25, p


def test_gabor_scaled_to_pretrained_conv1(narrow_file):
    path, src = narrow_file
    model = build_model("resnet50_narrow", 5)
    s = initialize(model, "gabor", model_name="resnet50_narrow", checkpoint=path, seed=2)
    w = sd(model)["conv1.weight"]
    assert abs(float(w.norm()) / float(src["conv1.weight"].norm()) - 1) < 1e-5
    bank, _ = gabor_bank(16, 3, 7)
    torch.testing.assert_close(w / w.norm(), bank / bank.norm())
    reference = build_model("resnet50_narrow", 5)
    initialize(reference, "random", model_name="resnet50_narrow", seed=2)
    for k, v in sd(reference).items():  # everything else is the seed's random init
        if k != "conv1.weight":
            assert torch.equal(sd(model)[k], v), k
    assert s["tensors"]["conv1.weight"] == "gabor" and s["gabor"]["norm_source"].startswith("pre")
    json.dumps(s)


def test_gabor_without_checkpoint_uses_the_he_norm():
    model = build_model("cbr_small", 5, in_channels=1)
    s = initialize(model, "gabor", model_name="cbr_small")
    w = sd(model)["cbr1.conv.weight"]
    he = math.sqrt(2 / (32 * 49)) * math.sqrt(w.numel())
    assert abs(float(w.norm()) - he) < 1e-4 and s["gabor"]["norm_source"].startswith("He")


def test_rgb_checkpoint_into_grayscale_model(narrow_file):
    path, src = narrow_file
    model = build_model("resnet50_narrow", 5, in_channels=1)
    s = initialize(model, "transfer", model_name="resnet50_narrow", checkpoint=path)
    torch.testing.assert_close(sd(model)["conv1.weight"],
                               src["conv1.weight"].sum(1, keepdim=True))
    assert any("summed over the colour channels" in n for n in s["notes"])


def test_methods_that_need_a_checkpoint_say_so():
    for method in ("transfer", "mean_var", "slim"):
        with pytest.raises(ConfigError, match="needs a checkpoint"):
            initialize(build_model("cbr_tiny", 5), method, model_name="cbr_tiny")
    with pytest.raises(ConfigError, match="unknown initialisation"):
        initialize(build_model("cbr_tiny", 5), "xavier", model_name="cbr_tiny")
