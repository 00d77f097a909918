"""MaxPool2dSavingIndices: nn.MaxPool2d's outputs and gradients, without keeping its input."""
import pytest
import torch
from torch import nn

from transfusion.ops import MaxPool2dSavingIndices

ARGS = [dict(kernel_size=3, stride=2), dict(kernel_size=2),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        dict(kernel_size=(3, 2), stride=(1, 2), dilation=(2, 1))]


@pytest.mark.parametrize("args", ARGS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_and_gradients_equal_nn_maxpool(args, channels_last, dtype):
    x = torch.randn(2, 5, 13, 11, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = MaxPool2dSavingIndices(**args)(ours), nn.MaxPool2d(**args)(theirs)
    g = torch.randn_like(y_theirs)
    y_ours.backward(g)
    y_theirs.backward(g)
    assert torch.equal(y_ours, y_theirs)
    assert torch.equal(ours.grad, theirs.grad)
    assert ours.grad.stride() == theirs.grad.stride()


def test_gradcheck():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MaxPool2dSavingIndices(3, 2), (x,))


def test_saves_indices_not_input():
    saved = []
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    a = x * 2  # a non-leaf input, as a block's output is
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        MaxPool2dSavingIndices(3, 2)(a)
    assert [t.dtype for t in saved] == [torch.int64]
    assert saved[0].shape == (2, 4, 7, 7)


def test_without_autograd_is_plain_max_pool():
    x = torch.randn(1, 2, 8, 8)
    pool = MaxPool2dSavingIndices(3, 2)
    with torch.no_grad():
        y = pool(x)
    assert y.grad_fn is None
    assert torch.equal(y, nn.functional.max_pool2d(x, 3, 2))
    assert isinstance(pool, nn.MaxPool2d)
