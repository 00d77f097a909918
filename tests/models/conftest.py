"""Shared, expensive fixtures of the model tests (built once per session: the suite is small)."""
import pytest
import torch

from transfusion.models import build_model


def make_fake_pretrained(name, num_classes=1000, seed=123):
    """A model whose tensors look trained: non-zero per-tensor means, BN away from identity."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.mul_(1.7).add_(0.05 * torch.randn(()))
                if k.endswith("running_var") or (".bn" in k or k.startswith("bn")) and k.endswith(
                        "weight"):
                    v.abs_().add_(0.1)
            elif k.endswith("num_batches_tracked"):
                v.fill_(1000)
    return model


@pytest.fixture(scope="session")
def fake_pretrained():
    """``fake_pretrained(name, num_classes=1000, seed=123) -> model`` (a fixture: the tests
    run with --import-mode=importlib, where a conftest cannot be imported by name)."""
    return make_fake_pretrained


@pytest.fixture(scope="session")
def resnet50_file(tmp_path_factory):
    """A torchvision-layout ResNet50 file (plain state_dict, 1000 classes) and its tensors."""
    model = make_fake_pretrained("resnet50")
    path = tmp_path_factory.mktemp("resnet50") / "resnet50-0676ba61.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()
