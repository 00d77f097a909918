"""scale_shift_relu (the normalise + affine + ReLU pass) against its float64 reference."""
from __future__ import annotations

import pytest
import torch

from transfusion import _extension, ops
from transfusion.errors import InputError
from transfusion.ops import reference

SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (4, 16, 13, 17), (3, 33, 8, 8), (2, 5), (2, 6, 11),
          (1, 4, 3, 5, 7)]


def _inputs(shape, dtype, device="cpu", channels_last=False):
    x = torch.randn(shape, dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    scale = (torch.rand(c, dtype=dtype, device=device) * 2 - 0.5)  # some negative scales
    shift = torch.randn(c, dtype=dtype, device=device)
    return x, scale, shift


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(shape, dtype):
    x, s, b = _inputs(shape, dtype)
    got = ops.scale_shift_relu(x, s, b)
    want = reference.scale_shift_relu(x, s, b)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (4, 19, 6, 9), (2, 64, 4, 4)])
def test_channels_last_input_keeps_its_layout(shape):
    x, s, b = _inputs(shape, torch.float32, channels_last=True)
    got = ops.scale_shift_relu(x, s, b)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, reference.scale_shift_relu(x, s, b), rtol=1e-6, atol=1e-6)


def test_non_contiguous_input():
    x = torch.randn(4, 6, 10, 10)[:, ::2, :, 1:]
    s, b = torch.rand(3), torch.randn(3)
    torch.testing.assert_close(ops.scale_shift_relu(x, s, b), reference.scale_shift_relu(x, s, b))


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_every_cpu_capability_agrees(capability, tmp_path):
    """Each compiled variant of the kernel (capped by TRANSFUSION_CPU_CAPABILITY) is correct."""
    import subprocess
    import sys
    code = (
        "import torch; from transfusion import ops, _extension; from transfusion.ops import reference\n"
        "torch.manual_seed(0)\n"
        "for shape in [(3, 17, 9, 11), (2, 37, 5, 3)]:\n"
        "  x = torch.randn(shape); s = torch.rand(shape[1]); b = torch.randn(shape[1])\n"
        "  for xx in (x, x.contiguous(memory_format=torch.channels_last)):\n"
        "    torch.testing.assert_close(ops.scale_shift_relu(xx, s, b), reference.scale_shift_relu(xx, s, b))\n"
        "print(_extension.build_info()['cpu_capability'])\n"
    )
    import os
    env = dict(os.environ, TRANSFUSION_CPU_CAPABILITY=capability)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    order = ["DEFAULT", "AVX2", "AVX512"]
    assert order.index(proc.stdout.strip()) <= order.index(capability.upper())


def test_gradcheck_float64():
    x, s, b = _inputs((2, 3, 4, 5), torch.float64)
    x = x + 0.05 * torch.sign(x)  # keep inputs away from the ReLU kink for finite differences
    for t in (x, s, b):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(ops.scale_shift_relu, (x, s, b))


@pytest.mark.skipif(not _extension.available(), reason="extension not built")
def test_opcheck():
    x, s, b = _inputs((2, 3, 4, 5), torch.float32)
    torch.library.opcheck(torch.ops.transfusion.scale_shift_relu.default, (x, s, b))
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.transfusion.scale_shift_relu.default, (x, s, b))


def test_torch_compile_fullgraph():
    x, s, b = _inputs((2, 3, 6, 6), torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, s, b):
        return ops.scale_shift_relu(x * 2, s, b) + 1

    torch.testing.assert_close(f(x, s, b), reference.scale_shift_relu(x * 2, s, b) + 1)


def test_bfloat16_on_cpu_uses_the_fallback():
    # the CPU kernel is float32/float64 only: dispatch sends other dtypes to the pure-torch path
    x, s, b = _inputs((2, 5, 6, 7), torch.bfloat16)
    got = ops.scale_shift_relu(x, s, b)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, reference.scale_shift_relu(x, s, b), rtol=1e-2, atol=1e-2)


def test_bad_shapes_get_a_clear_error():
    with pytest.raises(InputError, match="scale and shift of shape"):
        ops.scale_shift_relu(torch.randn(2, 3, 4), torch.ones(4), torch.zeros(3))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_reference(dtype, channels_last):
    x, s, b = _inputs((4, 24, 13, 9), dtype, "cuda", channels_last)
    got = ops.scale_shift_relu(x, s, b)
    want = reference.scale_shift_relu(x, s, b)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert _extension.has_kernel("cuda")
