"""scale_shift_relu (BN folded + ReLU in one pass) vs eager torch and the float64 reference.

Shapes: the first CBR-Small block's output at 224 px, batch 8 (8, 32, 224, 224), contiguous and
channels_last. What a user would otherwise write: torch.relu(x * scale + shift) (three passes) or
F.batch_norm(eval) + relu (two passes).
"""
import pytest
import torch
import torch.nn.functional as F

from transfusion import ops
from transfusion.ops import reference

SHAPE = (8, 32, 224, 224)


def _inputs(device="cpu", channels_last=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = SHAPE[1]
    return x, (torch.rand(c, generator=g) + 0.5).to(device), torch.randn(c, generator=g).to(device)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


CASES = [pytest.param("cpu", False, id="cpu"), pytest.param("cpu", True, id="cpu-channels_last"),
         pytest.param("cuda", False, id="cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device,channels_last", CASES)
def test_transfusion_scale_shift_relu(benchmark, device, channels_last):
    benchmark.group = f"scale_shift_relu {device}{' channels_last' if channels_last else ''}"
    x, s, b = _inputs(device, channels_last)
    benchmark(lambda: (ops.scale_shift_relu(x, s, b), _sync(device)))


@pytest.mark.parametrize("device,channels_last", CASES)
def test_eager_mul_add_relu(benchmark, device, channels_last):
    benchmark.group = f"scale_shift_relu {device}{' channels_last' if channels_last else ''}"
    x, s, b = _inputs(device, channels_last)
    s4, b4 = s[None, :, None, None], b[None, :, None, None]
    benchmark(lambda: (torch.relu(x * s4 + b4), _sync(device)))


@pytest.mark.parametrize("device,channels_last", CASES)
def test_eager_batch_norm_eval_relu(benchmark, device, channels_last):
    benchmark.group = f"scale_shift_relu {device}{' channels_last' if channels_last else ''}"
    x, s, b = _inputs(device, channels_last)
    mean, var = torch.zeros_like(s), torch.ones_like(s)
    benchmark(lambda: (F.relu(F.batch_norm(x, mean, var, s, b, False, 0.0, 0.0)), _sync(device)))


def test_float64_reference(benchmark):
    benchmark.group = "scale_shift_relu cpu"
    x, s, b = _inputs()
    benchmark.pedantic(reference.scale_shift_relu, (x, s, b), rounds=3, iterations=1)
