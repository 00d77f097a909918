"""The float32 rounding model (transfusion.ops.precision) bounds the real error whatever the order.

Issue 12: a float32 SVCCA was 8.8e-7 off float64 on an AMD EPYC and 1.36e-6 on an Intel Xeon, so
the bound must not come from one BLAS's summation order. Two checks:

* an emulated worst common order: each chunk's Gram summed row by row in float32 (sequential, as
  a GPU thread or reference BLAS does; also reversed), on offset, ReLU and quantised layers;
* the real Gram pass under every CPU capability the build has (our kernels via
  TRANSFUSION_CPU_CAPABILITY, ATen's via ATEN_CPU_CAPABILITY, MKL's via MKL_ENABLE_INSTRUCTIONS),
  with 1 and 2 threads, n from 1,500 to 100,000: |float32 - float64| <= error_estimate, and
  precision="auto" within 1e-6 of float64 for svcca, cca, pwcca and cka.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from transfusion.ops import dispatch
from transfusion.ops import gram as G
from transfusion.ops import precision as P
from transfusion.ops import similarity as S

CHUNK = 1024


def _layers(seed: int, n: int, a: int = 24, b: int = 16, kind: str = "offset_relu"):
    """x: offset neurons (mean 4), y: ReLU neurons; "quantised" rounds both to 1/8 (repeated values
    are where rounding leans one way)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g)
    x = z @ torch.randn(6, a, generator=g) / 2 + 0.5 * torch.randn(n, a, generator=g) + 4
    y = torch.relu(z @ torch.randn(6, b, generator=g) / 2 + torch.randn(n, b, generator=g))
    if kind == "quantised":
        x, y = (x * 8).round() / 8, (y * 8).round() / 8
    return x, y


def _sequential_moments(x, y, reverse: bool):
    """Moments from a Gram whose chunks are summed row by row in float32 (the diagonal in float64,
    as the Gram pass does), with the rounding model's entry variances."""
    shift = G.first_chunk_shift([x, y], CHUNK, torch.float32)
    z = torch.cat([x, y], 1).float() - shift.float()
    n, w = z.shape
    gram = torch.zeros(w, w, dtype=torch.float64)
    chunk_sq = []
    for r0 in range(0, n, CHUNK):
        acc = torch.zeros(w, w)
        rows = range(r0, min(n, r0 + CHUNK))
        for r in (reversed(rows) if reverse else rows):
            acc.addr_(z[r], z[r])
        gram += acc.double()
        chunk_sq.append((z[r0:r0 + CHUNK].double() ** 2).sum(0))
    chunk_sq = torch.stack(chunk_sq)
    gram.diagonal().copy_(chunk_sq.sum(0))
    rows = G.chunk_lengths(n, CHUNK)
    var = P.entry_variance(chunk_sq, rows) + P.entry_bias(gram, rows) ** 2
    a = x.shape[1]
    return S.moments_from_sums(n, shift, z.double().sum(0), gram, slice(0, a), slice(a, w),
                               "float32", "float32", var)


@pytest.mark.parametrize("kind", ["offset_relu", "quantised"])
def test_model_bounds_a_sequential_float32_sum(kind):
    worst = 0.0
    for seed in range(3):
        x, y = _layers(seed, 4000, kind=kind)
        exact = S.pair_moments(x.double(), y.double(), precision="float64")
        for reverse in (False, True):
            m = _sequential_moments(x, y, reverse)
            for method in ("svcca", "cca", "cka"):
                got = S.finalise_many(method, [m])[0]
                want = S.finalise_many(method, [exact])[0]
                assert got.error_estimate is not None
                assert abs(got.mean - want.mean) <= got.error_estimate, (seed, reverse, method)
                worst = max(worst, abs(got.mean - want.mean) / got.error_estimate)
    assert worst > 0  # the emulated order does make float32 errors


def test_gram_diagonal_is_summed_in_float64():
    x, y = _layers(0, 5000, kind="quantised")
    shift = G.first_chunk_shift([x, y], CHUNK, torch.float32)
    exact = torch.cat([x, y], 1).double() - shift
    for use_kernel in ([False, True] if dispatch.has_kernel("gram_pass", "cpu") else [False]):
        gram, _, chunk_sq = G.gram_pass([x, y], shift, CHUNK, dtype=torch.float32,
                                        use_kernel=use_kernel)
        torch.testing.assert_close(torch.diagonal(gram), (exact**2).sum(0), rtol=1e-14, atol=0)
        assert chunk_sq.shape == (5, 40)


def test_entry_bias_and_variance_shapes_and_scale():
    q = torch.tensor([[4.0, 1.0], [4.0, 1.0]], dtype=torch.float64)  # 2 chunks, 2 columns
    rows = torch.tensor([10.0, 10.0], dtype=torch.float64)
    var = P.entry_variance(q, rows)
    u = 2.0**-24
    assert var[0, 1] == pytest.approx(u * u * 12 * (4 * 1 + 4 * 1))
    gram = torch.tensor([[8.0, -3.0], [-3.0, 2.0]], dtype=torch.float64)
    bias = P.entry_bias(gram, rows)
    assert bias[0, 1] == pytest.approx(P.ROUNDING_BIAS * u * 10 * 3) and bias[0, 0] == 0


_SCRIPT = r"""
import json, sys, torch
from transfusion import ops, _extension
from transfusion.ops import precision as P
torch.set_num_threads(int(sys.argv[1]))
def layers(seed, n, a, b):
    g = torch.Generator().manual_seed(seed)
    if a == b == 256:  # wide, mixed layers (the benchmark's kind): "auto" keeps float32 here
        x = torch.randn(n, a, generator=g)
        return x, x @ torch.randn(a, b, generator=g) / 20 + torch.randn(n, b, generator=g)
    z = torch.randn(n, 6, generator=g)
    x = z @ torch.randn(6, a, generator=g) / 2 + 0.5 * torch.randn(n, a, generator=g) + 4
    y = torch.relu(z @ torch.randn(6, b, generator=g) / 2 + torch.randn(n, b, generator=g))
    return x, y
OPS = {"svcca": ops.svcca, "cca": ops.cca, "pwcca": ops.pwcca, "cka": ops.cka}
worst_ratio, worst_auto, auto_dtypes = 0.0, 0.0, set()
cases = [(s, n, 20, 12) for s in range(3) for n in (1500, 6000, 30000)]
cases += [(0, 100000, 20, 12), (1, 100000, 20, 12), (0, 30000, 96, 64), (0, 40000, 256, 256)]
for seed, n, a, b in cases:
    x, y = layers(seed, n, a, b)
    for name, op in OPS.items():
        want = op(x.double(), y.double()).mean
        auto = op(x, y)
        auto_dtypes.add(auto.dtype)
        worst_auto = max(worst_auto, abs(auto.mean - want))
        assert abs(auto.mean - want) <= 1e-6, (name, seed, n, auto.mean, want)
        if name == "cka":
            assert 0.0 <= auto.mean <= 1.0
        if name != "pwcca":
            f32 = op(x, y, precision="float32")
            assert f32.dtype == "float32" and f32.error_estimate is not None
            err = abs(f32.mean - want)
            assert err <= f32.error_estimate, (name, seed, n, err, f32.error_estimate)
            worst_ratio = max(worst_ratio, err / f32.error_estimate)
print(json.dumps({"capability": _extension.build_info()["cpu_capability"], "worst_ratio": worst_ratio,
                  "worst_auto": worst_auto, "auto_dtypes": sorted(auto_dtypes)}))
"""

_MKL = {"default": "SSE4_2", "avx2": "AVX2", "avx512": "AVX512"}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_every_capability_and_thread_count(capability, threads):
    env = dict(os.environ, TRANSFUSION_CPU_CAPABILITY=capability, ATEN_CPU_CAPABILITY=capability,
               MKL_ENABLE_INSTRUCTIONS=_MKL[capability], OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(threads)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    order = ["DEFAULT", "AVX2", "AVX512"]
    assert order.index(out["capability"]) <= order.index(capability.upper())
    assert out["worst_ratio"] <= 1.0 and out["worst_auto"] <= 1e-6
    assert "float32" in out["auto_dtypes"]  # the float32 branch of "auto" was exercised


def test_caller_matmul_precision_does_not_reach_the_gram_pass():
    # TF32 / bfloat16 internals (set_float32_matmul_precision("medium")) would void the bound
    x, y = _layers(0, 3000)
    shift = G.first_chunk_shift([x, y], CHUNK, torch.float32)
    want = G.gram_pass([x, y], shift, CHUNK, dtype=torch.float32)[0]
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = G.gram_pass([x, y], shift, CHUNK, dtype=torch.float32)[0]
        assert torch.get_float32_matmul_precision() == "medium"  # the caller's setting is restored
    finally:
        torch.set_float32_matmul_precision(before)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
