"""CBR2d / conv_bn_relu against Conv2d -> BatchNorm2d -> ReLU (eager) and the float64 reference."""
import copy

import pytest
import torch
from torch import nn

from transfusion import _extension
from transfusion.memory import saved_activation_bytes
from transfusion.models.cbr import CBR_SPECS, CBRNet
from transfusion.ops import CBR2d, MaxPool2dSavingIndices, conv_bn_relu, reference

needs_ext = pytest.mark.skipif(not _extension.available(), reason="transfusion._C not built")

# (batch, in, out, kernel, stride, padding, height, width)
CASES = [
    (2, 3, 8, 3, 1, "same", 9, 7),
    (1, 4, 6, 3, 2, 1, 11, 13),
    (3, 5, 7, 5, 2, 0, 12, 9),
    (1, 2, 3, 1, 1, 0, 5, 5),
    (2, 3, 16, 7, 1, "same", 10, 10),
]


def _pair(case, dtype, seed=0):
    n, cin, cout, k, stride, padding, h, w = case
    torch.manual_seed(seed)
    fused = CBR2d(cin, cout, k, stride=stride, padding=padding, fused=True).to(dtype)
    with torch.no_grad():
        fused.bn.weight.uniform_(0.5, 1.5)
        fused.bn.bias.uniform_(-0.5, 0.5)
        fused.bn.running_mean.uniform_(-0.2, 0.2)
        fused.bn.running_var.uniform_(0.5, 2.0)
    eager = copy.deepcopy(fused)
    eager.fused = False
    x = torch.randn(n, cin, h, w, dtype=dtype)
    return fused, eager, x


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_train_mode_matches_eager(case, dtype, channels_last):
    fused, eager, x = _pair(case, dtype)
    if channels_last:
        fused, eager = (m.to(memory_format=torch.channels_last) for m in (fused, eager))
        x = x.contiguous(memory_format=torch.channels_last)
    xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, ye = fused(xf), eager(xe)
    torch.testing.assert_close(yf, ye, **_tol(dtype))
    g = torch.randn_like(ye)
    yf.backward(g)
    ye.backward(g)
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else _tol(dtype)
    torch.testing.assert_close(xf.grad, xe.grad, **tol)
    for (name, pf), (_, pe) in zip(fused.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(pf.grad, pe.grad, **tol, msg=f"grad of {name}")
    for (name, bf), (_, be) in zip(fused.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(bf, be, **_tol(dtype), msg=f"buffer {name}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_mode_matches_eager_and_reference(case, dtype, channels_last):
    fused, eager, x = _pair(case, dtype, seed=1)
    fused.eval()
    eager.eval()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, ye = fused(xf), eager(xe)
    torch.testing.assert_close(yf, ye, **_tol(dtype))
    bn = fused.bn
    ref, _, _ = reference.conv_bn_relu(x, fused.conv.weight, bn.weight, bn.bias, bn.running_mean,
                                       bn.running_var, False, 0.1, bn.eps, fused.conv.stride,
                                       fused.conv.padding)
    torch.testing.assert_close(yf.double(), ref, **_tol(dtype))
    g = torch.randn_like(ye)
    yf.backward(g)
    ye.backward(g)
    torch.testing.assert_close(xf.grad, xe.grad, **_tol(dtype))
    wtol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else _tol(dtype)
    torch.testing.assert_close(fused.conv.weight.grad, eager.conv.weight.grad, **wtol)
    assert int(fused.bn.num_batches_tracked) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_stats_match_reference(dtype):
    case = (3, 4, 5, 3, 2, 1, 9, 8)
    fused, _, x = _pair(case, dtype, seed=2)
    bn = fused.bn
    _, ref_mean, ref_var = reference.conv_bn_relu(
        x, fused.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, True,
        bn.momentum, bn.eps, fused.conv.stride, fused.conv.padding)
    fused(x)
    torch.testing.assert_close(bn.running_mean.double(), ref_mean, **_tol(dtype))
    torch.testing.assert_close(bn.running_var.double(), ref_var, **_tol(dtype))
    assert int(bn.num_batches_tracked) == 1


def test_momentum_none_cumulative_average_matches_eager():
    fused = CBR2d(3, 4, 3, fused=True)
    fused.bn.momentum = None
    eager = copy.deepcopy(fused)
    eager.fused = False
    for seed in range(3):
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
        fused(x)
        eager(x)
    for (name, bf), (_, be) in zip(fused.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(bf, be, msg=f"buffer {name}")


def test_momentum_none_compiles_fullgraph():
    torch._dynamo.reset()
    fused = CBR2d(3, 4, 3, fused=True)
    fused.bn.momentum = None
    eager = copy.deepcopy(fused)
    eager.fused = False
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    for seed in range(2):
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
        compiled(x)
        eager(x)
    for (name, bf), (_, be) in zip(fused.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(bf, be, msg=f"buffer {name}")


def test_state_dict_keys_interchangeable_with_eager_block():
    fused = CBR2d(3, 8, 3)
    eager = nn.Sequential()
    eager.add_module("conv", nn.Conv2d(3, 8, 3, padding=1, bias=False))
    eager.add_module("bn", nn.BatchNorm2d(8))
    assert list(fused.state_dict()) == list(eager.state_dict())
    eager.load_state_dict(fused.state_dict())
    fused.load_state_dict(eager.state_dict())


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_conv_bn_relu_float64(training):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gamma = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    rm = torch.randn(3, generator=g, dtype=torch.float64) * 0.1
    rv = torch.rand(3, generator=g, dtype=torch.float64) + 0.5

    def f(x, w, gamma, beta):
        # fresh buffers each call: gradcheck evaluates many times
        return conv_bn_relu(x, w, gamma, beta, rm.clone(), rv.clone(), training, 0.1, 1e-5,
                            (2, 1), (1, 0))

    assert torch.autograd.gradcheck(f, (x, w, gamma, beta))


@pytest.mark.parametrize("training", [True, False])
def test_torch_compile_fullgraph(training):
    torch._dynamo.reset()
    fused, eager, x = _pair((2, 3, 8, 3, 1, "same", 8, 8), torch.float32, seed=3)
    compiled_model = copy.deepcopy(fused)
    fused.train(training)
    compiled_model.train(training)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    xc, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yc, yf = compiled(xc), fused(xf)
    torch.testing.assert_close(yc, yf, rtol=1e-5, atol=1e-5)
    yc.sum().backward()
    yf.sum().backward()
    torch.testing.assert_close(xc.grad, xf.grad, rtol=1e-4, atol=1e-5)
    for (name, bc), (_, bf) in zip(compiled_model.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(bc, bf, msg=f"buffer {name}")


def _tiny_cbr(fused: bool) -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(
        CBR2d(3, 8, 5, fused=fused), (MaxPool2dSavingIndices if fused else nn.MaxPool2d)(3, 2),
        CBR2d(8, 16, 5, fused=fused), (MaxPool2dSavingIndices if fused else nn.MaxPool2d)(3, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def test_training_a_small_cbr_model_tracks_eager():
    fused, eager = _tiny_cbr(True), _tiny_cbr(False)
    eager.load_state_dict(fused.state_dict())
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.05, momentum=0.9)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(12)
    for _ in range(5):
        x = torch.randn(4, 3, 24, 24, generator=g)
        t = torch.randint(0, 5, (4,), generator=g)
        for model, opt in ((fused, opt_f), (eager, opt_e)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), t)
            loss.backward()
            opt.step()
    for (name, a), (_, b) in zip(fused.state_dict().items(), eager.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"state {name}")
    fused.eval()
    eager.eval()
    x = torch.randn(2, 3, 24, 24, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_train_step_matches_eager_bf16(channels_last):
    fused, eager, x = _pair((4, 8, 16, 3, 1, "same", 16, 16), torch.float32, seed=4)
    fused, eager, x = fused.cuda(), eager.cuda(), x.cuda()
    if channels_last:
        fused, eager = (m.to(memory_format=torch.channels_last) for m in (fused, eager))
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yf, ye = fused(x), eager(x)
    torch.testing.assert_close(yf.float(), ye.float(), rtol=3e-2, atol=3e-2)
    yf.float().sum().backward()
    ye.float().sum().backward()
    torch.testing.assert_close(fused.conv.weight.grad, eager.conv.weight.grad, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(fused.bn.running_mean, eager.bn.running_mean, rtol=2e-2, atol=2e-2)


@needs_ext
def test_fused_block_saves_its_output_less_than_eager():
    # Eager keeps the BN input (conv output) and the ReLU result; the fused block keeps the conv
    # output and (C,) statistics only: its backward recomputes the ReLU mask from the conv output.
    fused, eager, x = _pair((2, 3, 16, 3, 1, "same", 12, 12), torch.float32, seed=5)
    x.requires_grad_()
    y_bytes = 2 * 16 * 12 * 12 * 4
    assert saved_activation_bytes(eager, x) - saved_activation_bytes(fused, x) >= y_bytes


@needs_ext
@pytest.mark.parametrize("name", ["cbr_small", "cbr_larget"])
def test_fused_cbr_model_saves_at_most_0_7_of_eager(name):
    # Per pooled block eager keeps conv output + ReLU output + int64 pool indices (+ the pooled
    # output for the next conv); fused drops the ReLU output: about 0.64x in all.
    torch.manual_seed(0)
    fused = CBRNet(CBR_SPECS[name], num_classes=5, fused=True)
    eager = CBRNet(CBR_SPECS[name], num_classes=5, fused=False)
    x = torch.randn(2, 3, 64, 64)
    ratio = saved_activation_bytes(fused, x) / saved_activation_bytes(eager, x)
    assert ratio <= 0.7, ratio


def test_fused_cbr_model_trains_like_eager():
    torch.manual_seed(3)
    fused = CBRNet(CBR_SPECS["cbr_tiny"], num_classes=3, fused=True)
    eager = CBRNet(CBR_SPECS["cbr_tiny"], num_classes=3, fused=False)
    eager.load_state_dict(fused.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (fused, eager)]
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        x, t = torch.randn(4, 3, 48, 48, generator=g), torch.randint(0, 3, (4,), generator=g)
        for model, opt in zip((fused, eager), opts):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), t).backward()
            opt.step()
    for (name, a), (_, b) in zip(fused.state_dict().items(), eager.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"state {name}")
