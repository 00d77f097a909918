"""SVCCA speed and accuracy, side by side (``pytest bench/bench_svcca.py --benchmark-only -s``).

Groups (one comparison each):
  * "svcca 512x512 n=100k": ours (transfusion.ops.svcca, keep=0.99) vs the classic numpy float64
    recipe (google/svcca style: full SVD of each centred layer, keep 99% of the variance, CCA via
    covariance inverse square roots) vs a straightforward torch float32 recipe (SVD to keep 99%,
    QR of the kept activations, singular values of Q_x^T Q_y) vs a leaner torch float32 QR-first
    recipe (QR of each layer, SVD of R to keep 99%). The numpy baseline runs on one BLAS thread
    (faster than two on this shared machine: a conservative ratio). Accuracy: |mean - float64 reference| < 1e-6.
    Also issue 16's plain-torch method (one float32 Gram of the centred [x y], float64 eigh,
    svdvals) and one full float32 [x y]^T [x y] (the floor is half of it); bench/svcca_side_by_side.py
    runs these, MKL's ssyrk, anatome and google/svcca interleaved in one process (the RESULTS table).
  * "gram pass 512+512 n=100k": our Gram pass (compiled op; the same scheme in torch ops) vs
    torch.mm float32 at the same shapes (the machine's matmul rate, measured in this run).
  * "cuda gram pass 512+512 n=100k" and "cuda svcca 512x512 n=100k": the same comparisons on a GPU
    (the same data moved to it): our Gram pass vs cuBLAS float32 torch.mm (TF32 off, torch's
    default), our svcca vs the two torch float32 recipes; synchronised timings; skipped without
    CUDA (bench/gpu_check.sh runs them on a lent GPU).
  * "streaming n=1M": CCAStatistics over 100 chunks of 10,000 rows, peak memory above the inputs
    measured in a fresh subprocess: VmHWM at the end minus the resident size once the inputs'
    chunk exists (see _STREAM_SCRIPT).
The ours-benchmark of each group runs last and prints the ratios (they also go to extra_info).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from transfusion.ops import dispatch, svcca
from transfusion.ops import gram as G
from transfusion.ops import reference_cca as R

N, A, B = 100_000, 512, 512
KEEP = 0.99
_T: dict[str, float] = {}
_VALUES: dict[str, float] = {}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, 64, generator=g)
    x = torch.relu(z @ torch.randn(64, A, generator=g) + torch.randn(N, A, generator=g)) + 0.1
    y = z @ torch.randn(64, B, generator=g) + 2 * torch.randn(N, B, generator=g) + 1.0
    return x.contiguous(), y.contiguous()


@pytest.fixture(scope="module")
def reference(data):
    return float(R.svcca(*data, keep=KEEP).mean())


# ---- baselines ----------------------------------------------------------------------------------

def classic_numpy_svcca(acts1: np.ndarray, acts2: np.ndarray, keep: float = KEEP) -> float:
    """google/svcca-style, (neurons, datapoints) float64: SVD -> keep -> CCA via Sigma^-1/2."""
    def reduce(acts):
        acts = acts.astype(np.float64)
        acts = acts - acts.mean(axis=1, keepdims=True)
        _, s, vt = np.linalg.svd(acts, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep)) + 1
        return s[:k, None] * vt[:k]

    def inv_sqrt(m):
        w, v = np.linalg.eigh(m)
        w = np.maximum(w, 1e-12 * w.max())
        return (v / np.sqrt(w)) @ v.T

    r1, r2 = reduce(acts1), reduce(acts2)
    n = r1.shape[1]
    s11, s22, s12 = r1 @ r1.T / (n - 1), r2 @ r2.T / (n - 1), r1 @ r2.T / (n - 1)
    rho = np.linalg.svd(inv_sqrt(s11) @ s12 @ inv_sqrt(s22), compute_uv=False)
    return float(np.mean(rho[:min(r1.shape[0], r2.shape[0])]))


def _keep(s: torch.Tensor, keep: float) -> int:
    share = torch.cumsum(s**2, 0) / (s**2).sum()
    return int(torch.searchsorted(share, torch.tensor(keep, dtype=share.dtype, device=share.device))) + 1


def torch_svd_qr_svcca(x: torch.Tensor, y: torch.Tensor, keep: float = KEEP) -> float:
    """Straightforward torch float32: SVD of each centred layer, keep 99%, QR, svdvals(Qx^T Qy)."""
    qs = []
    for a in (x, y):
        ac = a - a.mean(0)
        u, s, _ = torch.linalg.svd(ac, full_matrices=False)
        k = _keep(s, keep)
        q, _ = torch.linalg.qr(u[:, :k] * s[:k])
        qs.append(q)
    rho = torch.linalg.svdvals(qs[0].T @ qs[1])
    return float(rho[:min(q.shape[1] for q in qs)].mean())


def torch_qr_first_svcca(x: torch.Tensor, y: torch.Tensor, keep: float = KEEP) -> float:
    """Leaner torch float32: QR of each centred layer, SVD of R picks the kept directions."""
    qs = []
    for a in (x, y):
        q, r = torch.linalg.qr(a - a.mean(0))
        u, s, _ = torch.linalg.svd(r)
        qs.append(q @ u[:, :_keep(s, keep)])
    rho = torch.linalg.svdvals(qs[0].T @ qs[1])
    return float(rho[:min(q.shape[1] for q in qs)].mean())


def plain_torch_svcca(x: torch.Tensor, y: torch.Tensor, keep: float = KEEP) -> float:
    """Issue 16's plain-torch method: ONE float32 Gram of the centred [x y] (one matmul), then
    float64 eigh of C_xx, C_yy, keep 99% of each side's variance, whiten, svdvals."""
    a = x.shape[1]
    z = torch.cat([x, y], 1)
    z -= z.mean(0)
    c = (z.T @ z).double()
    ws = []
    for s in (slice(0, a), slice(a, None)):
        lam, vec = torch.linalg.eigh(c[s, s])
        lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
        k = int((torch.cumsum(lam, 0) / lam.sum() < keep - 1e-12).sum()) + 1
        ws.append(vec[:, :k] * torch.rsqrt(lam[:k]))
    rho = torch.linalg.svdvals(ws[0].T @ c[:a, a:] @ ws[1])
    return float(rho[:min(w.shape[1] for w in ws)].clamp(0, 1).mean())


def full_float32_gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One full float32 [x y]^T [x y] (the GEMM the floor is half of)."""
    z = torch.cat([x, y], 1)
    return z.T @ z


def mkl_ssyrk():
    """MKL's single-precision symmetric rank-k update from the libtorch_cpu that torch ships
    (``mkl_blas_ssyrk``, an internal MKL entry point with the Fortran ssyrk arguments; torch does
    not expose a syrk), or None where it is not exported. Returns f(z) -> upper triangle of z^T z."""
    import ctypes

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).mkl_blas_ssyrk
    except (OSError, AttributeError):
        return None
    i64, ref = ctypes.c_int64, ctypes.byref

    def syrk(z: torch.Tensor) -> torch.Tensor:
        z = z.contiguous().float()
        k, w = z.shape
        c = torch.zeros(w, w)
        # row-major z (k, w) is column-major z^T (w, k): C = z^T z, column-major lower = upper here
        fn(ref(ctypes.c_char(b"U")), ref(ctypes.c_char(b"N")), ref(i64(w)), ref(i64(k)),
           ref(ctypes.c_float(1.0)), ctypes.c_void_p(z.data_ptr()), ref(i64(w)),
           ref(ctypes.c_float(0.0)), ctypes.c_void_p(c.data_ptr()), ref(i64(w)))
        return c
    return syrk


def _store(benchmark, key, value=None):
    _T[key] = benchmark.stats.stats.min
    if value is not None:
        _VALUES[key] = value


SV = "svcca 512x512 n=100k"


@pytest.mark.benchmark(group=SV)
def test_svcca_classic_numpy_float64(benchmark, data):
    x, y = data
    from threadpoolctl import threadpool_limits

    xn, yn = x.numpy().T, y.numpy().T  # google/svcca layout
    # One BLAS thread: on this shared 2-core machine OpenBLAS with 2 threads was 5x SLOWER
    # (512x20000 SVD: 14.5 s vs 2.9 s) while other jobs ran; one thread keeps the ratio conservative.
    with threadpool_limits(1):
        v = benchmark.pedantic(classic_numpy_svcca, args=(xn, yn), rounds=1, iterations=1)
    _store(benchmark, "classic", v)


@pytest.mark.benchmark(group=SV)
def test_svcca_torch_svd_qr_float32(benchmark, data):
    v = benchmark.pedantic(torch_svd_qr_svcca, args=data, rounds=2, iterations=1)
    _store(benchmark, "torch_svd_qr", v)


@pytest.mark.benchmark(group=SV)
def test_svcca_torch_qr_first_float32(benchmark, data):
    v = benchmark.pedantic(torch_qr_first_svcca, args=data, rounds=2, iterations=1)
    _store(benchmark, "torch_qr_first", v)


@pytest.mark.benchmark(group=SV)
def test_svcca_plain_torch(benchmark, data):
    v = benchmark.pedantic(plain_torch_svcca, args=data, rounds=3, iterations=1)
    _store(benchmark, "plain", v)


@pytest.mark.benchmark(group=SV)
def test_svcca_full_float32_gram(benchmark, data):
    benchmark.pedantic(full_float32_gram, args=data, rounds=3, iterations=1)
    _store(benchmark, "full_gram")


@pytest.mark.benchmark(group=SV)
def test_svcca_ours(benchmark, data, reference):
    res = benchmark.pedantic(svcca, args=data, kwargs={"keep": KEEP}, rounds=5, iterations=1)
    _store(benchmark, "ours", res.mean)
    err = abs(res.mean - reference)
    info = {"abs_err_vs_float64_reference": err, "kept": res.kept, "dtype": res.dtype}
    for k in ("classic", "torch_svd_qr", "torch_qr_first", "plain"):
        if k in _T:
            info[f"speedup_vs_{k}"] = _T[k] / _T["ours"]
            info[f"{k}_abs_err"] = abs(_VALUES[k] - reference)
    if "full_gram" in _T:  # issue 16's floor: a symmetric rank-k update, half the full GEMM
        info["ratio_to_syrk_floor"] = _T["ours"] / (_T["full_gram"] / 2)
    benchmark.extra_info.update(info)
    print(f"\n[{SV}] ours {res!r}\n  reference {reference:.10f}  " + json.dumps(info, default=str))
    assert err < 1e-6


GP = "gram pass 512+512 n=100k"


@pytest.mark.benchmark(group=GP)
def test_gram_torch_mm_rate(benchmark, data):
    x, y = data
    benchmark.pedantic(torch.mm, args=(x.T, y), rounds=5, iterations=1, warmup_rounds=1)
    _store(benchmark, "mm")


@pytest.mark.benchmark(group=GP)
def test_gram_pass_torch_ops(benchmark, data):
    x, y = data
    shift = G.first_chunk_shift([x, y])
    benchmark.pedantic(G.gram_pass, args=([x, y], shift), kwargs={"use_kernel": False}, rounds=3, iterations=1)
    _store(benchmark, "gram_torch")


@pytest.mark.benchmark(group=GP)
def test_gram_pass_ours(benchmark, data):
    x, y = data
    shift = G.first_chunk_shift([x, y])
    use_kernel = dispatch.has_kernel("gram_pass", x.device)
    benchmark.pedantic(G.gram_pass, args=([x, y], shift), kwargs={"use_kernel": use_kernel}, rounds=5,
                       iterations=1, warmup_rounds=1)
    _store(benchmark, "gram")
    mm_gflops = 2 * N * A * B / _T["mm"] / 1e9 if "mm" in _T else float("nan")
    useful = 2 * N * (A * A + B * B + A * B)  # the three blocks computed
    info = {"compiled_op": use_kernel, "torch_mm_gflops": mm_gflops,
            "gram_gflops_3_blocks": useful / _T["gram"] / 1e9,
            "gram_gflops_full_2n(a+b)^2": 2 * N * (A + B) ** 2 / _T["gram"] / 1e9}
    info["fraction_of_mm_rate"] = info["gram_gflops_3_blocks"] / mm_gflops
    if "gram_torch" in _T:
        info["speedup_vs_torch_ops_pass"] = _T["gram_torch"] / _T["gram"]
    benchmark.extra_info.update(info)
    print(f"\n[{GP}] " + json.dumps(info))


_STREAM_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time, torch
    from transfusion.ops import CCAStatistics
    precision, batches = sys.argv[1], int(sys.argv[2])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10_000, 64, generator=g)
    chunk = {"a": torch.relu(z @ torch.randn(64, 512, generator=g) + torch.randn(10_000, 512, generator=g)),
             "b": z @ torch.randn(64, 512, generator=g) + torch.randn(10_000, 512, generator=g)}
    del z
    import os
    # Baseline: the CURRENT resident size with the inputs' chunk allocated (not the high-water mark,
    # which may include freed temporaries); peak: VmHWM at the end. The difference is an upper
    # bound of the extra memory the accumulator needed at its peak (it also counts MKL's buffers).
    before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024  # KiB
    stats = CCAStatistics(groups=[["a", "b"]], precision=precision)
    t = time.perf_counter()
    for _ in range(batches):  # n = batches x 10,000 datapoints; the same chunk's memory each time
        stats.update("a", chunk["a"])
        stats.update("b", chunk["b"])
    r = stats.svcca("a", "b")
    seconds = time.perf_counter() - t
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child of a big pytest process reports
    # its parent's high-water mark (measured: 2.9 GB "peak" that was the parent's).
    peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]  # KiB
    print(json.dumps({"n": stats.n("a"), "seconds": seconds, "peak_above_inputs_MiB": (peak - before) / 1024,
                      "stats_MiB": stats.memory_bytes() / 2**20, "svcca": r.mean, "precision": precision}))
""")


@pytest.mark.benchmark(group="streaming n=1M 512+512")
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_streaming_memory(benchmark, precision):
    """Memory independent of n: the peak above the inputs' chunk is the same at n = 100k and
    n = 1M, and within 12 W^2 float64 matrices (96 MiB at W = 512 + 512). What it holds, all
    W x W: the statistics (Gram; for float32 also the rounding model's entry variances and biases:
    stats_MiB 8 / 24), the pass's buffers, and the finalisation's temporaries (covariance blocks,
    eigenvectors, the error model's gradients). Measured 2026-12-08 (bench/RESULTS.md): 85 MiB
    (float32) and 76 MiB (float64) at both n; the 64 MiB bound of 2026-11-26 predates the rounding
    model's W^2 statistics and error model. glibc's mmap threshold is fixed for the child: its
    default moving threshold keeps freed 1-16 MiB blocks resident, which made the same run read
    41-123 MiB from one process to the next (allocator retention, not our peak; slower: every
    large block is fresh pages)."""
    def run(batches: int) -> dict:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run([sys.executable, "-c", _STREAM_SCRIPT, precision, str(batches)],
                             check=True, capture_output=True, text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    short = run(10)
    info = benchmark.pedantic(run, args=(100,), rounds=1, iterations=1)
    info["peak_above_inputs_MiB_at_n_100k"] = short["peak_above_inputs_MiB"]
    benchmark.extra_info.update(info)
    print(f"\n[streaming] {json.dumps(info)}")
    assert info["n"] == 1_000_000 and short["n"] == 100_000
    assert info["peak_above_inputs_MiB"] < 12 * (A + B) ** 2 * 8 / 2**20
    assert info["peak_above_inputs_MiB"] - short["peak_above_inputs_MiB"] < 8


# ---- GPU (skipped without CUDA; bench/gpu_check.sh runs them) ------------------------------------
GPC = "cuda gram pass 512+512 n=100k"
SVC = "cuda svcca 512x512 n=100k"


@pytest.fixture(scope="module")
def cuda_data(data):
    return tuple(t.cuda() for t in data)


def _synced(fn, *args, **kwargs):
    """``fn``'s result once the GPU has finished it (what a timing of GPU work needs)."""
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


@pytest.mark.cuda
@pytest.mark.benchmark(group=GPC)
def test_cuda_gram_cublas_mm_rate(benchmark, cuda_data):
    x, y = cuda_data
    benchmark.pedantic(_synced, args=(torch.mm, x.T, y), rounds=20, iterations=1, warmup_rounds=2)
    _store(benchmark, "cuda_mm")


@pytest.mark.cuda
@pytest.mark.benchmark(group=GPC)
def test_cuda_gram_pass_ours(benchmark, cuda_data):
    x, y = cuda_data
    shift = G.first_chunk_shift([x, y])
    use_kernel = dispatch.has_kernel("gram_pass", x.device)
    benchmark.pedantic(_synced, args=(G.gram_pass, [x, y], shift), kwargs={"use_kernel": use_kernel},
                       rounds=10, iterations=1, warmup_rounds=2)
    _store(benchmark, "cuda_gram")
    mm_gflops = 2 * N * A * B / _T["cuda_mm"] / 1e9 if "cuda_mm" in _T else float("nan")
    useful = 2 * N * (A * A + B * B + A * B)
    info = {"compiled_op": use_kernel, "cublas_mm_gflops": mm_gflops,
            "gram_gflops_3_blocks": useful / _T["cuda_gram"] / 1e9}
    info["fraction_of_cublas_rate"] = info["gram_gflops_3_blocks"] / mm_gflops
    benchmark.extra_info.update(info)
    print(f"\n[{GPC}] " + json.dumps(info))


@pytest.mark.cuda
@pytest.mark.benchmark(group=SVC)
def test_cuda_svcca_torch_svd_qr_float32(benchmark, cuda_data):
    v = benchmark.pedantic(_synced, args=(torch_svd_qr_svcca, *cuda_data), rounds=3, iterations=1,
                           warmup_rounds=1)
    _store(benchmark, "cuda_torch_svd_qr", v)


@pytest.mark.cuda
@pytest.mark.benchmark(group=SVC)
def test_cuda_svcca_torch_qr_first_float32(benchmark, cuda_data):
    v = benchmark.pedantic(_synced, args=(torch_qr_first_svcca, *cuda_data), rounds=3, iterations=1,
                           warmup_rounds=1)
    _store(benchmark, "cuda_torch_qr_first", v)


@pytest.mark.cuda
@pytest.mark.benchmark(group=SVC)
def test_cuda_svcca_ours(benchmark, cuda_data, reference):
    res = benchmark.pedantic(_synced, args=(svcca, *cuda_data), kwargs={"keep": KEEP}, rounds=5,
                             iterations=1, warmup_rounds=1)
    _store(benchmark, "cuda_ours", res.mean)
    err = abs(res.mean - reference)
    info = {"abs_err_vs_float64_reference": err, "kept": res.kept, "dtype": res.dtype}
    for k in ("cuda_torch_svd_qr", "cuda_torch_qr_first"):
        if k in _T:
            info[f"speedup_vs_{k[5:]}"] = _T[k] / _T["cuda_ours"]
            info[f"{k[5:]}_abs_err"] = abs(_VALUES[k] - reference)
    benchmark.extra_info.update(info)
    print(f"\n[{SVC}] ours {res!r}\n  reference {reference:.10f}  " + json.dumps(info, default=str))
    assert err < 1e-6


# ---- issue 16 on the GPU: plain method, floor, many pairs batched (skipped without CUDA) --------
SVC16 = "cuda issue16 svcca 512x512 n=100k"
PAIRS = "cuda issue16 8 pairs 256+256 n=100k"


@pytest.mark.cuda
@pytest.mark.benchmark(group=SVC16)
def test_cuda_issue16_plain_torch(benchmark, cuda_data):
    with G._full_float32_matmul():
        v = benchmark.pedantic(_synced, args=(plain_torch_svcca, *cuda_data), rounds=5, iterations=1,
                               warmup_rounds=1)
    _store(benchmark, "cuda_plain", v)


@pytest.mark.cuda
@pytest.mark.benchmark(group=SVC16)
def test_cuda_issue16_full_float32_gram(benchmark, cuda_data):
    with G._full_float32_matmul():
        benchmark.pedantic(_synced, args=(full_float32_gram, *cuda_data), rounds=10, iterations=1,
                           warmup_rounds=2)
    _store(benchmark, "cuda_full_gram")


@pytest.mark.cuda
@pytest.mark.benchmark(group=SVC16)
def test_cuda_issue16_ours(benchmark, cuda_data, reference):
    res = benchmark.pedantic(_synced, args=(svcca, *cuda_data), kwargs={"keep": KEEP}, rounds=5,
                             iterations=1, warmup_rounds=1)
    _store(benchmark, "cuda_ours16", res.mean)
    info = {"abs_err_vs_float64_reference": abs(res.mean - reference), "dtype": res.dtype}
    if "cuda_plain" in _T:
        info["speedup_vs_plain"] = _T["cuda_plain"] / _T["cuda_ours16"]
    if "cuda_full_gram" in _T:
        info["ratio_to_syrk_floor"] = _T["cuda_ours16"] / (_T["cuda_full_gram"] / 2)
    benchmark.extra_info.update(info)
    print(f"\n[{SVC16}] " + json.dumps(info, default=str))


@pytest.fixture(scope="module")
def cuda_pairs():
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(N, 256, device="cuda", generator=g) for _ in range(8)]
    ys = [x @ torch.randn(256, 256, device="cuda", generator=g) / 20
          + torch.randn(N, 256, device="cuda", generator=g) for x in xs]
    return xs, ys


@pytest.mark.cuda
@pytest.mark.benchmark(group=PAIRS)
def test_cuda_issue16_pairs_one_pass_each(benchmark, cuda_pairs):
    xs, ys = cuda_pairs

    def run():
        for x, y in zip(xs, ys):
            G.gram_pass([x, y], G.first_chunk_shift([x, y]))
    benchmark.pedantic(_synced, args=(run,), rounds=5, iterations=1, warmup_rounds=1)
    _store(benchmark, "cuda_pairs_loop")


@pytest.mark.cuda
@pytest.mark.benchmark(group=PAIRS)
def test_cuda_issue16_pairs_batched(benchmark, cuda_pairs):
    xs, ys = cuda_pairs
    flat = [t for pair in zip(xs, ys) for t in pair]

    def run():
        return G.gram_pass_groups(flat, G.first_chunk_shift(flat), [2] * len(xs))
    gram = benchmark.pedantic(_synced, args=(run,), rounds=5, iterations=1, warmup_rounds=1)[0]
    _store(benchmark, "cuda_pairs_batched")
    want = G.gram_pass([xs[0], ys[0]], G.first_chunk_shift([xs[0], ys[0]]))[0]
    rel = float((gram[:512, :512] - want).abs().max() / want.abs().max())
    info = {"pairs": len(xs), "max_rel_diff_vs_one_pass": rel}
    if "cuda_pairs_loop" in _T:
        info["speedup_vs_one_pass_each"] = _T["cuda_pairs_loop"] / _T["cuda_pairs_batched"]
    benchmark.extra_info.update(info)
    print(f"\n[{PAIRS}] " + json.dumps(info))
    assert rel < 1e-5


@pytest.mark.cuda
@pytest.mark.benchmark(group=PAIRS)
def test_cuda_issue16_eigh_all_pairs_at_once(benchmark, cuda_pairs):
    """The small float64 eigen problems of all pairs (16 sides of 256) in one batched call vs a loop."""
    xs, _ = cuda_pairs
    mats = torch.stack([(x[:4096].T @ x[:4096]).double() for x in xs] * 2)
    loop = min(_timed(lambda: [torch.linalg.eigh(m) for m in mats]) for _ in range(3))
    batched = benchmark.pedantic(_synced, args=(torch.linalg.eigh, mats), rounds=5, iterations=1,
                                 warmup_rounds=1)
    info = {"sides": mats.shape[0], "loop_s": loop,
            "speedup_batched_vs_loop": loop / benchmark.stats.stats.min}
    benchmark.extra_info.update(info)
    print(f"\n[{PAIRS} eigh] " + json.dumps(info))
    assert batched[0].shape == mats.shape[:2]


def _timed(fn) -> float:
    import time

    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t
