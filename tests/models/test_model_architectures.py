"""The paper's models: sizes, torchvision layout, forward at the paper's input sizes, stages."""
import pytest
import torch
from torch import nn

from transfusion.errors import ConfigError
from transfusion.models import (
    CBR_SPECS,
    INCEPTION_MIN_INPUT_SIZE,
    MODEL_NAMES,
    build_model,
    canonical_model_name,
    model_skeleton,
)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def conv_weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name, expected", [
    ("resnet50", 25_557_032), ("inception_v3", 27_161_264)])
def test_torchvision_parameter_counts(name, expected):
    assert n_params(model_skeleton(name, 1000)) == expected


# docs/paper.md, "Models": conv weights LargeT 8.53M, LargeW 8.44M, Small 2.11M, Tiny 1.08M.
@pytest.mark.parametrize("name, millions", [
    ("cbr_larget", 8.53), ("cbr_largew", 8.44), ("cbr_small", 2.11), ("cbr_tiny", 1.08)])
def test_cbr_conv_weight_counts_match_the_paper(name, millions):
    assert round(conv_weights(model_skeleton(name, 5)) / 1e6, 2) == millions


def test_cbr_specs_follow_the_paper_table():
    assert [c for c, _ in CBR_SPECS["cbr_larget"].layers] == [32, 64, 128, 256, 512]
    assert [p for _, p in CBR_SPECS["cbr_larget"].layers] == [True] * 4 + [False]
    for name in ("cbr_largew", "cbr_small", "cbr_tiny"):
        assert all(pool for _, pool in CBR_SPECS[name].layers)
    assert CBR_SPECS["cbr_tiny"].kernel == 5 and CBR_SPECS["cbr_small"].kernel == 7
    m = model_skeleton("cbr_larget", 5)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert all(c.stride == (1, 1) and c.bias is None and c.padding == (3, 3) for c in convs)
    pools = [mod for mod in m.modules() if isinstance(mod, nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.kernel_size == 3 and p.stride == 2 and p.padding == 0
                                   for p in pools)


# A few torchvision keys and shapes, copied from torchvision's resnet50 / inception_v3
# state_dicts (the full key-for-key check is test_torchvision_parity.py, where it imports).
TORCHVISION_KEYS = {
    "resnet50": (320, {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer2.0.conv2.weight": (128, 128, 3, 3), "layer3.5.bn2.running_var": (256,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048), "fc.bias": (1000,),
    }),
    "inception_v3": (580, {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7dbl_2.conv.weight": (128, 128, 7, 1),
        "Mixed_6e.branch7x7_3.conv.weight": (192, 192, 7, 1),
        "AuxLogits.conv0.conv.weight": (128, 768, 1, 1),
        "AuxLogits.conv1.conv.weight": (768, 128, 5, 5), "AuxLogits.fc.weight": (1000, 768),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1), "fc.weight": (1000, 2048),
    }),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_torchvision_keys_and_shapes(name):
    n_keys, some = TORCHVISION_KEYS[name]
    sd = model_skeleton(name, 1000).state_dict()
    assert len(sd) == n_keys
    for key, shape in some.items():
        assert tuple(sd[key].shape) == shape, key


def test_inception_uses_bn_eps_1e3():
    m = model_skeleton("inception_v3", 10)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert len(bns) == 96 and all(b.eps == 1e-3 for b in bns)


def test_slim_and_narrow_shapes():
    full = model_skeleton("resnet50", 5).state_dict()
    slim = model_skeleton("resnet50_slim", 5).state_dict()
    assert list(full) == list(slim)
    for k in full:
        if k.startswith(("conv1", "bn1", "layer1", "layer2")):
            assert full[k].shape == slim[k].shape, k
    assert slim["layer3.0.conv1.weight"].shape == (128, 512, 1, 1)
    assert slim["layer3.5.conv3.weight"].shape == (512, 128, 1, 1)
    assert slim["layer4.2.conv3.weight"].shape == (1024, 256, 1, 1)
    assert slim["fc.weight"].shape == (5, 1024)
    narrow = model_skeleton("resnet50_narrow", 5).state_dict()
    assert list(narrow) == list(full)
    for k in full:
        if full[k].dim() == 4:
            assert narrow[k].shape[0] * 4 == full[k].shape[0], k


def test_registry_names_and_aliases():
    assert set(MODEL_NAMES) == {"resnet50", "inception_v3", "resnet50_slim", "resnet50_narrow", "resnet50_narrow_slim",
                                "cbr_larget", "cbr_largew", "cbr_small", "cbr_tiny"}
    assert canonical_model_name("CBR-Small") == "cbr_small"
    assert canonical_model_name("Inception-v3") == "inception_v3"
    assert canonical_model_name("ResNet50") == "resnet50"
    with pytest.raises(ConfigError, match="choose one of"):
        build_model("vgg16", 5)
    with pytest.raises(ConfigError, match="in_channels"):
        build_model("cbr_tiny", 5, in_channels=4)


# Real (numerical) forwards at the paper's sizes, batch 1, kept to a few models: the suite must
# stay fast. Every other (model, size, channels) is checked on the meta device (shapes only).
@pytest.mark.parametrize("name, size, in_channels", [
    ("resnet50", 224, 3), ("inception_v3", 299, 3), ("cbr_tiny", 587, 1)])
def test_forward_numerically(name, size, in_channels):
    torch.manual_seed(0)
    model = build_model(name, 5, in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(1, in_channels, size, size))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [224, 299, 587])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shapes_at_paper_sizes(name, size, in_channels):
    model = model_skeleton(name, 5, in_channels).eval()
    out = model(torch.empty(2, in_channels, size, size, device="meta"))
    assert out.shape == (2, 5)


def test_inception_smallest_input():
    model = model_skeleton("inception_v3", 5).eval()
    size = INCEPTION_MIN_INPUT_SIZE
    assert model(torch.empty(1, 3, size, size, device="meta")).shape == (1, 5)
    with pytest.raises(ValueError, match="at least 75"):
        model(torch.empty(1, 3, size - 1, size - 1, device="meta"))


def test_inception_aux_head_on_request():
    model = model_skeleton("inception_v3", 5).train()
    x = torch.empty(2, 3, 299, 299, device="meta")
    assert model(x).shape == (2, 5)  # plain logits by default
    model.return_aux = True
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 5)
    assert model.eval()(x).shape == (2, 5)  # no aux head at evaluation


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stage_interface(name):
    model = model_skeleton(name, 5)
    stages = model.stage_names
    first = {"resnet": "conv1", "incep": "Conv2d_1a_3x3", "cbr_l": "cbr1", "cbr_s": "cbr1",
             "cbr_t": "cbr1"}
    assert stages[0] == next(v for k, v in first.items() if name.startswith(k))
    assert model.top_stages == stages[-2:]
    assert model.first_conv_key in model.stage_keys(stages[0])
    sd = model.state_dict()
    assert model.first_conv_key in sd and sd[model.first_conv_key].dim() == 4
    assert f"{model.head_prefix}.weight" in sd
    # every key belongs to exactly one stage, or to a head, or (Inception) to the aux branch
    seen = [k for s in stages for k in model.stage_keys(s)]
    assert len(seen) == len(set(seen))
    rest = [k for k in sd if k not in set(seen)]
    assert all(model.is_head_key(k) or k.startswith("AuxLogits.") for k in rest), rest
    with pytest.raises(KeyError, match="its stages are"):
        model.stage("nope")


def test_resnet_and_cbr_stage_names():
    assert model_skeleton("resnet50", 5).stage_names == ("conv1", "block1", "block2", "block3",
                                                         "block4")
    assert model_skeleton("cbr_larget", 5).stage_names == tuple(f"cbr{i}" for i in range(1, 6))
    incep = model_skeleton("inception_v3", 5)
    assert incep.stage_names[-1] == "Mixed_7c" and incep.top_stages == ("Mixed_7b", "Mixed_7c")


@pytest.mark.parametrize("name, size, expected", [
    ("resnet50_narrow", 64, {"conv1": (16, 32, 32), "block1": (64, 16, 16), "block4": (512, 2, 2)}),
    ("cbr_tiny", 64, {"cbr1": (32, 64, 64), "cbr4": (256, 7, 7)}),
])
def test_stage_hooks_see_the_stage_activation(name, size, expected):
    model = build_model(name, 3).eval()
    seen = {}
    for s in expected:
        model.stage(s).register_forward_hook(
            lambda m, i, o, s=s: seen.__setitem__(s, tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert seen == expected


def test_cbr_fused_and_eager_agree():
    torch.manual_seed(0)
    fused = build_model("cbr_tiny", 5, cbr_fused=True)
    eager = build_model("cbr_tiny", 5, cbr_fused=False)
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 48, 48)
    for mode in ("train", "eval"):
        getattr(fused, mode)(), getattr(eager, mode)()
        torch.testing.assert_close(fused(x), eager(x), rtol=1e-4, atol=1e-5)
    for a, b in zip(fused.state_dict().values(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
