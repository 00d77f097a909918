"""Key-for-key and output parity with torchvision's own resnet50 / inception_v3.

Runs only where torchvision imports (it is not a run-time dependency). torchvision's C++ ops
may not load beside a different torch build; its models are pure Python and need only the
``torchvision::nms``/``qnms`` op schemas to exist, so the test defines them first if missing.
"""
import pytest
import torch

from transfusion.models import build_model


def _import_torchvision_models():
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
    except RuntimeError:
        try:
            lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - kept alive below
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
            _import_torchvision_models.lib = lib
        except RuntimeError:
            pass
    try:
        import torchvision.models as tvm
    except Exception as exc:  # ImportError, or a broken binary build
        pytest.skip(f"torchvision not importable here ({type(exc).__name__}: {exc})")
    return tvm


@pytest.mark.parametrize("name, size", [("resnet50", 64), ("inception_v3", 75)])
def test_same_keys_shapes_and_outputs_as_torchvision(name, size):
    tvm = _import_torchvision_models()
    torch.manual_seed(0)
    theirs = (tvm.resnet50() if name == "resnet50"
              else tvm.inception_v3(init_weights=False, aux_logits=True)).eval()
    ours = build_model(name, 1000).eval()
    a = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(a) == list(b) and a == b
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
