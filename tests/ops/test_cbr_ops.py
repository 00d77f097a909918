"""The compiled training-mode BN + ReLU ops against their float64 reference."""
import pytest
import torch

from transfusion import _extension
from transfusion.errors import InputError
from transfusion.ops import bn_relu_train, reference

needs_ext = pytest.mark.skipif(not _extension.available(), reason="transfusion._C not built")

SHAPES = [(2, 3, 5, 7), (1, 4, 3, 3), (3, 5, 1, 1), (2, 17, 9, 11), (4, 33, 8, 8), (2, 6, 10)]


def _make(shape, dtype, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1.5
    c = shape[1]
    w = torch.randn(c, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64) * 0.5
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_matches_reference(shape, dtype, channels_last):
    x, w, b = _make(shape, dtype, channels_last)
    y, mean, invstd, var = bn_relu_train(x, w, b, 1e-5)
    ry, rmean, rinvstd, rvar = reference.bn_relu_train(x, w, b, 1e-5)
    torch.testing.assert_close(y, ry, **_tol(dtype))
    torch.testing.assert_close(mean.double(), rmean, **_tol(dtype))
    torch.testing.assert_close(var.double(), rvar, **_tol(dtype))
    torch.testing.assert_close(invstd.double(), rinvstd, **_tol(dtype))
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(
        memory_format=torch.channels_last)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_matches_reference(shape, dtype, channels_last):
    x, w, b = _make(shape, dtype, channels_last, seed=1)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y = bn_relu_train(xs, ws, bs, 1e-5)[0]
    y.backward(g)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    reference.bn_relu_train(xr, wr, br, 1e-5)[0].backward(g.double())
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else _tol(dtype)
    torch.testing.assert_close(xs.grad.double(), xr.grad, **tol)
    torch.testing.assert_close(ws.grad.double(), wr.grad, **tol)
    torch.testing.assert_close(bs.grad.double(), br.grad, **tol)


@needs_ext
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(channels_last):
    x, w, b = _make((2, 3, 4, 5), torch.float64, channels_last, seed=3)
    # Random pre-activations land within gradcheck's 1e-6 step of the ReLU kink with negligible
    # probability; the seed is fixed, so this is deterministic.
    inputs = tuple(t.clone().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: bn_relu_train(*a, 1e-5)[0], inputs)


@needs_ext
def test_statistics_stable_for_large_offset():
    # sum-of-squares formulas lose everything here; the chunked two-pass merge must not.
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(4, 3, 64, 64, generator=g) * 1e-2 + 1e4).float()
    _, mean, _, var = bn_relu_train(x, torch.ones(3), torch.zeros(3), 1e-5)
    ref_var, ref_mean = torch.var_mean(x.double(), (0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-2, atol=0)


@needs_ext
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_lower_cpu_capabilities(capability, tmp_path):
    # Run the lower per-capability builds in a subprocess (the choice is read once per process).
    import os
    import subprocess
    import sys
    code = (
        "import torch, transfusion.ops as o, transfusion.ops.reference as r\n"
        "x = (torch.randn(2, 19, 7, 5, dtype=torch.float64) * 2 + 1).float()\n"
        "w = torch.randn(19); b = torch.randn(19)\n"
        "for xx in (x, x.contiguous(memory_format=torch.channels_last)):\n"
        "    xx = xx.clone().requires_grad_()\n"
        "    y = o.bn_relu_train(xx, w, b, 1e-5)[0]\n"
        "    ry = r.bn_relu_train(xx.detach(), w, b, 1e-5)[0]\n"
        "    torch.testing.assert_close(y, ry, rtol=1e-4, atol=1e-4)\n"
        "    y.sum().backward()\n"
        "    xr = xx.detach().double().requires_grad_()\n"
        "    r.bn_relu_train(xr, w, b, 1e-5)[0].sum().backward()\n"
        "    torch.testing.assert_close(xx.grad.double(), xr.grad, rtol=1e-3, atol=1e-4)\n"
        "import transfusion._C as c; print(c.build_info()['cpu_capability'])\n"
    )
    env = dict(os.environ, TRANSFUSION_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == capability or out.stdout.strip() == "DEFAULT"


@needs_ext
def test_opcheck_registered_ops():
    x, w, b = _make((2, 5, 4, 3), torch.float32, False, seed=5)
    torch.library.opcheck(torch.ops.transfusion.bn_relu_stats_forward, (x, w, b, 1e-5))
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    torch.library.opcheck(torch.ops.transfusion.bn_relu_stats_forward, (xg, wg, bg, 1e-5))
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.transfusion.bn_relu_stats_forward, (xc, w, b, 1e-5))
    y, mean, invstd, var = torch.ops.transfusion.bn_relu_stats_forward(x, w, b, 1e-5)
    g = torch.randn_like(x)
    torch.library.opcheck(torch.ops.transfusion.bn_relu_backward, (g, x, w, b, mean, var, 1e-5))


def test_bad_input_raises_clear_error():
    with pytest.raises(InputError, match="shape"):
        bn_relu_train(torch.randn(2, 3, 4, 4), torch.ones(4), torch.zeros(4))
    with pytest.raises(InputError, match="more than 1 value per channel"):
        bn_relu_train(torch.randn(1, 3, 1, 1), torch.ones(3), torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_reference(dtype, channels_last):
    x, w, b = _make((4, 33, 17, 19), torch.float32, channels_last, seed=6)
    x, w, b = x.cuda().to(dtype), w.cuda(), b.cuda()
    xs = x.clone().requires_grad_()
    y, mean, _, var = bn_relu_train(xs, w, b, 1e-5)
    ry, rmean, _, rvar = reference.bn_relu_train(x, w, b, 1e-5)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.float(), ry.float(), **tol)
    torch.testing.assert_close(mean.double(), rmean, **tol)
    torch.testing.assert_close(var.double(), rvar, **tol)
    g = torch.randn_like(x)
    y.backward(g)
    xr = x.detach().double().requires_grad_()
    reference.bn_relu_train(xr, w, b, 1e-5)[0].backward(g.double())
    torch.testing.assert_close(xs.grad.double(), xr.grad, rtol=5e-2 if dtype == torch.bfloat16
                               else 1e-3, atol=5e-2 if dtype == torch.bfloat16 else 1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_aten_fallback_matches_reference(channels_last):
    # The path taken without the extension (or on devices/dtypes without kernels).
    from transfusion.ops.bn_relu_train import _composite
    x, w, b = _make((2, 5, 6, 7), torch.float64, channels_last, seed=8)
    xs = x.clone().requires_grad_()
    y, mean, invstd, var = _composite(xs, w, b, 1e-5)
    ry, rmean, rinvstd, rvar = reference.bn_relu_train(x, w, b, 1e-5)
    for got, want in ((y, ry), (mean, rmean), (invstd, rinvstd), (var, rvar)):
        torch.testing.assert_close(got, want)
    y.sum().backward()
    xr = x.clone().requires_grad_()
    reference.bn_relu_train(xr, w, b, 1e-5)[0].sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad)


def test_bfloat16_on_cpu_uses_fallback_within_tolerance():
    x, w, b = _make((2, 4, 5, 5), torch.float32, False, seed=9)
    y, mean, _, _ = bn_relu_train(x.bfloat16(), w, b, 1e-5)
    ry, rmean, _, _ = reference.bn_relu_train(x.bfloat16(), w, b, 1e-5)
    assert y.dtype == torch.bfloat16 and mean.dtype == torch.float32
    torch.testing.assert_close(y.float(), ry.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mean.double(), rmean, rtol=1e-3, atol=1e-3)


@needs_ext
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_mask_is_the_forwards_at_exact_zeros(channels_last, dtype):
    # Every plane holds 0s and 1s in equal numbers: mean 0.5, var 0.25 exactly, and with eps = 0,
    # weight 1, bias 1 the pre-activation 2x + 0 is exactly 0 wherever x = 0. ReLU's gradient
    # there is 0 (as eager's threshold_backward and the reference's relu), so the backward must
    # recompute the forward's mask exactly, with odd sizes to run the vector tails too.
    n, c, h, w = 2, 19, 7, 6
    gen = torch.Generator().manual_seed(0)
    planes = [(torch.arange(h * w) % 2)[torch.randperm(h * w, generator=gen)] for _ in range(n)]
    x = torch.stack(planes).to(dtype).reshape(n, 1, h, w).expand(n, c, h, w).contiguous()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.ones(c, dtype=dtype), torch.ones(c, dtype=dtype)
    g = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(1)).to(dtype)
    xs = x.clone().requires_grad_()
    y, _, _, var = bn_relu_train(xs, weight, bias, 0.0)
    assert torch.equal(var, torch.full((c,), 0.25, dtype=dtype))
    assert int((y == 0).sum()) == x.numel() // 2
    y.backward(g)
    xr = x.double().requires_grad_()
    ry = reference.bn_relu_train(xr, weight.double(), bias.double(), 0.0)[0]
    assert torch.equal(ry == 0, y == 0)
    ry.backward(g.double())
    torch.testing.assert_close(xs.grad.double(), xr.grad, **_tol(dtype))
