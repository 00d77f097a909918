"""Checkpoint files: torchvision / timm / own formats, round trips, and clear errors."""
import argparse

import pytest
import torch

from transfusion.errors import CheckpointError
from transfusion.initializers import (
    identify_architecture,
    initialize,
    load_model_checkpoint,
    load_state_dict_file,
    read_checkpoint,
    save_model_checkpoint,
)
from transfusion.models import build_model


@pytest.fixture(scope="module")
def narrow():
    torch.manual_seed(5)
    return build_model("resnet50_narrow", 1000)


def test_torchvision_layout_round_trip(tmp_path, narrow):
    path = tmp_path / "resnet50_narrow-0000.pth"
    torch.save(narrow.state_dict(), path)
    loaded = load_state_dict_file(path)
    assert list(loaded) == list(narrow.state_dict())
    fresh = build_model("resnet50_narrow", 1000)
    fresh.load_state_dict(loaded, strict=True)
    for k, v in narrow.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_resnet50_round_trip_through_a_torchvision_file(resnet50_file):
    path, src = resnet50_file
    ckpt = read_checkpoint(path)
    assert ckpt.notes == [] and ckpt.model_name is None
    assert identify_architecture(ckpt.state_dict) == "resnet50"
    target = build_model("resnet50", 5)
    s = initialize(target, "transfer", model_name="resnet50", checkpoint=path)
    assert s["counts"] == {"checkpoint": 318, "random": 2}
    assert list(ckpt.state_dict) == list(src)
    for k, v in target.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, src[k]), k


def test_old_torchvision_file_without_bn_counters(tmp_path, narrow):
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in narrow.state_dict().items()
                if not k.endswith("num_batches_tracked")}, path)
    model = build_model("resnet50_narrow", 5)
    s = initialize(model, "transfer", model_name="resnet50_narrow", checkpoint=path)
    assert s["counts"] == {"checkpoint": 265, "reset": 53, "random": 2}
    assert s["tensors"]["bn1.num_batches_tracked"] == "reset"
    assert int(model.state_dict()["bn1.num_batches_tracked"]) == 0
    assert not any("stayed random" in n for n in s["notes"])


def test_model_name_must_match_the_model():
    with pytest.raises(Exception, match="built as 'cbr_tiny'"):
        initialize(build_model("cbr_tiny", 5), "random", model_name="cbr_small")


def test_timm_style_file_with_wrapper_and_module_prefix(tmp_path, narrow):
    path = tmp_path / "timm.pth.tar"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in
                                           narrow.state_dict().items()}}, path)
    ckpt = read_checkpoint(path)
    assert list(ckpt.state_dict) == list(narrow.state_dict())
    assert any("'state_dict'" in n for n in ckpt.notes) and any("module." in n for n in ckpt.notes)


def test_timm_inception_without_aux_head(tmp_path):
    torch.manual_seed(1)
    model = build_model("inception_v3", 5)  # one build (slow): it is the source and the target
    src = {k: v.clone() for k, v in model.state_dict().items() if "Mixed_7c.branch_pool" in k}
    path = tmp_path / "inception_v3_timm.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items()
                          if not k.startswith(("AuxLogits.", "fc."))}}, path)
    assert identify_architecture(load_state_dict_file(path)) == "inception_v3"
    s = initialize(model, "transfer", model_name="inception_v3", checkpoint=path, seed=9)
    assert s["tensors"]["AuxLogits.conv0.conv.weight"] == "random"
    assert s["tensors"]["AuxLogits.fc.weight"] == "random"
    assert "AuxLogits.fc.bias" in s["head"]["keys"]
    assert torch.equal(model.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                       src["Mixed_7c.branch_pool.conv.weight"])
    assert model.transform_input and any("transform_input" in n for n in s["notes"])


def test_own_format_round_trip(tmp_path):
    torch.manual_seed(2)
    model = build_model("cbr_small", 5, in_channels=1)
    path = tmp_path / "step0.pt"
    save_model_checkpoint(path, model, "CBR-Small", {"step": 0, "run": "abc"})
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == "transfusion-model" and obj["version"] == 1
    assert (obj["model_name"], obj["num_classes"], obj["in_channels"]) == ("cbr_small", 5, 1)
    again, info = load_model_checkpoint(path)
    assert info["meta"] == {"step": 0, "run": "abc"}
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    assert read_checkpoint(path).model_name == "cbr_small"
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no temp file left


def test_wrong_architecture_names_what_the_file_is(tmp_path):
    cbr = build_model("cbr_small", 5)
    own = tmp_path / "cbr_small.pt"
    save_model_checkpoint(own, cbr, "cbr_small")
    plain = tmp_path / "cbr_small.pth"
    torch.save(cbr.state_dict(), plain)
    for path in (own, plain):
        with pytest.raises(CheckpointError, match=r"does not fit ResNet50-narrow.*missing conv1"
                                                  r".*Its tensors are a CBR-Small checkpoint"):
            initialize(build_model("resnet50_narrow", 5), "transfer",
                       model_name="resnet50_narrow", checkpoint=path)
    # same stage names and shapes for cbr1, but the whole architecture must match
    with pytest.raises(CheckpointError, match="CBR-Small checkpoint.*not CBR-LargeT"):
        initialize(build_model("cbr_larget", 5), "transfuse", model_name="cbr_larget",
                   checkpoint=plain, upto="cbr1")


def test_unknown_state_dict_is_described(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match=r"matches none of the registry's models.*"
                                              r"features.0.weight \(8, 3, 3, 3\)"):
        initialize(build_model("cbr_tiny", 5), "transfer", model_name="cbr_tiny",
                   checkpoint=path)


def test_truncated_file(tmp_path, narrow):
    full = tmp_path / "full.pth"
    torch.save(narrow.state_dict(), full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a checkpoint"):
        load_state_dict_file(cut)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a checkpoint"):
        load_state_dict_file(text)
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match="not a model state_dict"):
        load_state_dict_file(listed)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_file_with_python_objects_is_refused_with_a_fix(tmp_path, narrow):
    path = tmp_path / "train_ckpt.pth.tar"
    torch.save({"state_dict": narrow.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="extract its weights once"):
        load_state_dict_file(path)


def test_grayscale_checkpoint_into_rgb_model(tmp_path):
    path = tmp_path / "gray.pt"
    save_model_checkpoint(path, build_model("cbr_tiny", 5, in_channels=1), "cbr_tiny")
    with pytest.raises(CheckpointError, match="in_channels=1"):
        initialize(build_model("cbr_tiny", 5), "transfer", model_name="cbr_tiny", checkpoint=path)
