"""Debiased linear CKA and orthogonal Procrustes similarity (issue 16), in memory and streamed.

Oracles (transfusion.ops.reference_cca) straight from the definitions on the full data: the
unbiased HSIC of Song et al. 2012 on the full n x n kernels with zeroed diagonals, and the SVD
of the centred, Frobenius-normalised X^T Y. The fast ops get there from one pass of sufficient
statistics whose size does not depend on n.
"""
import os
import tempfile

import pytest
import torch

from transfusion.errors import InputError
from transfusion.models import build_model
from transfusion.ops import CCAStatistics, SimilarityResult, cka, conv_to_datapoints, procrustes
from transfusion.ops import gram as G
from transfusion.ops import precision as P
from transfusion.ops import reference_cca as R
from transfusion.ops import similarity as S
from transfusion.ops.cca_statistics import _rebase


def debiased(x, y, **kw):
    return cka(x, y, debiased=True, **kw)


OPS = {"cka_debiased": debiased, "procrustes": procrustes}
REFS = {"cka_debiased": R.cka_debiased, "procrustes": R.procrustes}


def _stat(stats, method, a, b):
    return stats.cka(a, b, debiased=True) if method == "cka_debiased" else stats.procrustes(a, b)


def _pair(n=1500, a=24, b=16, seed=0, dtype=torch.float32):
    """Two layers sharing a few latent directions, with offsets (non-centred), ReLU and mixing."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g, dtype=torch.float64)
    x = z @ torch.randn(8, a, generator=g, dtype=torch.float64) + torch.randn(n, a, generator=g, dtype=torch.float64)
    y = (z @ torch.randn(8, b, generator=g, dtype=torch.float64)
         + 2 * torch.randn(n, b, generator=g, dtype=torch.float64))
    return (x + 3).to(dtype), (torch.relu(y) - 1).to(dtype)


def _cnn_layers(images=12, size=32, seed=0):
    """Real activations: two ReLU layers of a freshly initialised cbr_tiny on random images,
    pooled to one 8 x 8 grid (datapoints = images x 64 positions, neurons = channels)."""
    torch.manual_seed(seed)
    model = build_model("cbr_tiny", 2).eval()
    out = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, o, name=name: out.__setitem__(name, o.detach())) for name in ("cbr1", "cbr2")]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model(torch.rand(images, 3, size, size, generator=g))
    for h in hooks:
        h.remove()
    return out["cbr1"], out["cbr2"]


# ---- in memory, against the oracles ------------------------------------------------------------

@pytest.mark.parametrize("method", list(OPS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-9)])
def test_random_layers_match_oracle(method, dtype, tol):
    for seed in range(3):
        x, y = _pair(seed=seed, dtype=dtype)
        r = OPS[method](x, y)
        assert abs(r.mean - REFS[method](x, y)) < tol, (seed, r)
        assert r.coefficients.numel() == 0 and r.kept == (24, 16) and r.n == 1500


@pytest.mark.parametrize("method", list(OPS))
def test_float32_gemms_stay_within_their_error_estimate(method):
    """precision="float32": the error estimate (rounding model of transfusion.ops.precision, taken
    through each method's gradient) bounds the real error against the float64 oracle."""
    for seed in range(3):
        for n in (40, 1500, 6000):
            x, y = _pair(n=n, seed=seed)
            r = OPS[method](x, y, precision="float32")
            assert r.dtype == "float32" and r.error_estimate is not None
            assert abs(r.mean - REFS[method](x, y)) <= r.error_estimate, (seed, n, r)


def _sequential_moments(x, y, reverse):
    """Moments from a Gram whose 1024-row chunks are summed row by row in float32 (the diagonal in
    float64, as the Gram pass does): an emulated worst common summation order (as in
    test_float32_bound), with the row-norm sums of debiased CKA in float64."""
    shift = G.first_chunk_shift([x, y], 1024, torch.float32)
    z = torch.cat([x, y], 1).float() - shift.float()
    n, w = z.shape
    gram = torch.zeros(w, w, dtype=torch.float64)
    chunk_sq = []
    for r0 in range(0, n, 1024):
        acc = torch.zeros(w, w)
        rows = range(r0, min(n, r0 + 1024))
        for r in (reversed(rows) if reverse else rows):
            acc.addr_(z[r], z[r])
        gram += acc.double()
        chunk_sq.append((z[r0:r0 + 1024].double() ** 2).sum(0))
    chunk_sq = torch.stack(chunk_sq)
    gram.diagonal().copy_(chunk_sq.sum(0))
    rows = G.chunk_lengths(n, 1024)
    var = P.entry_variance(chunk_sq, rows) + P.entry_bias(gram, rows) ** 2
    a = x.shape[1]
    return S.moments_from_sums(n, shift, z.double().sum(0), gram, slice(0, a), slice(a, w),
                               "float32", "float32", var, S.row_norm_sums([x, y], shift, 1024))


def test_error_model_bounds_a_sequential_float32_sum():
    g = torch.Generator().manual_seed(0)
    worst = {}
    for seed in range(2):
        x, y = _pair(n=3000, seed=seed)
        x = (x * 8).round() / 8  # quantised: repeated values, where rounding leans one way
        y = torch.cat([y, torch.randn(3000, 4, generator=g) + 4], 1)  # offset neurons
        exact = S.pair_moments(x.double(), y.double(), precision="float64", row_norms=True)
        for reverse in (False, True):
            m = _sequential_moments(x, y, reverse)
            for method, kw in (("cka", {"debiased": True}), ("procrustes", {})):
                got = S.finalise_many(method, [m], **kw)[0]
                want = S.finalise_many(method, [exact], **kw)[0]
                assert got.error_estimate is not None
                assert abs(got.mean - want.mean) <= got.error_estimate, (seed, reverse, method)
                worst[method] = max(worst.get(method, 0.0), abs(got.mean - want.mean))
    assert all(v > 0 for v in worst.values())  # the emulated order does make float32 errors


@pytest.mark.slow
def test_auto_keeps_float32_only_within_1e6():
    """Wide layers, n (a+b)^2 above FLOAT64_FREE_MACS: "auto" starts with float32 GEMMs and keeps
    them only where the modelled error is within 1e-6 (else redoes the pass in float64). The
    reference is the float64 op (the n x n oracle kernels would need 7 GB here)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30000, 96, generator=g)
    y = x @ torch.randn(96, 64, generator=g) / 20 + torch.randn(30000, 64, generator=g)
    assert not P.float64_is_cheap(30000, 160)
    for method, op in OPS.items():
        r = op(x, y)
        want = op(x.double(), y.double()).mean
        assert abs(r.mean - want) < 1e-6, (method, r.dtype, r.error_estimate)
        if r.dtype == "float32":
            assert r.error_estimate <= 1e-6


@pytest.mark.parametrize("method", list(OPS))
def test_real_activations_match_oracle_in_memory(method):
    a1, a2 = _cnn_layers()
    x, y = conv_to_datapoints(a1, pool=8), conv_to_datapoints(a2, pool=8)
    assert x.shape == (12 * 64, 32) and y.shape == (12 * 64, 64)
    want = REFS[method](x, y)
    assert abs(OPS[method](x, y).mean - want) < 1e-6
    assert abs(OPS[method](x.double(), y.double()).mean - want) < 1e-9


# ---- streamed: several batches, merged, saved and loaded ----------------------------------------

def _stream(layers, batch, **kw):
    stats = CCAStatistics(groups={"g": list(layers)}, **kw)
    n = next(iter(layers.values())).shape[0]
    for i in range(0, n, batch):
        for name, act in layers.items():
            stats.update(name, act[i:i + batch])
    return stats


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-9)])
def test_streamed_merged_saved_loaded_match_oracle(dtype, tol, tmp_path):
    x, y = _pair(n=3000, dtype=dtype)
    z = _pair(n=3000, a=9, b=5, seed=7, dtype=dtype)[0]
    layers = {"x": x, "y": y, "z": z}
    full = _stream(layers, 700)
    # the second half starts with a very different batch, so its shift differs: merge rebases
    second = {k: v[1400:] for k, v in layers.items()}
    second = {k: torch.cat([v[:200] * 5 + 40, v[200:]]) for k, v in second.items()}
    truth = {k: torch.cat([v[:1400], second[k]]) for k, v in layers.items()}
    first = _stream({k: v[:1400] for k, v in layers.items()}, 500)
    first.save(tmp_path / "first.pt")
    merged = CCAStatistics.load(tmp_path / "first.pt").merge(_stream(second, 333))
    merged.save(tmp_path / "merged.pt")
    back = CCAStatistics.load(tmp_path / "merged.pt")
    assert back.n("x") == 3000
    for method in OPS:
        for a, b in (("x", "y"), ("y", "z"), ("x", "z"), ("y", "y")):
            assert abs(_stat(full, method, a, b).mean - REFS[method](layers[a], layers[b])) < tol
            for stats in (merged, back):
                assert abs(_stat(stats, method, a, b).mean - REFS[method](truth[a], truth[b])) < tol
            # and the in-memory op on the same data
            assert abs(_stat(back, method, a, b).mean - OPS[method](truth[a], truth[b]).mean) < tol
    # keeps accumulating after load
    back.update_many({k: v[:100] for k, v in layers.items()})
    more = {k: torch.cat([truth[k], layers[k][:100]]) for k in layers}
    assert abs(back.cka("x", "y", debiased=True).mean - R.cka_debiased(more["x"], more["y"])) < tol


def test_streamed_real_activations_match_oracle(tmp_path):
    a1, a2 = _cnn_layers(images=16)
    x, y = conv_to_datapoints(a1, pool=8), conv_to_datapoints(a2, pool=8)
    want = {m: ref(x, y) for m, ref in REFS.items()}

    def feed(stats, lo, hi):
        for i in range(lo, hi, 3):  # 3 images a batch, conv activations pooled by the statistics
            stats.update_many({"cbr1": a1[i:min(i + 3, hi)], "cbr2": a2[i:min(i + 3, hi)]})
        return stats

    def new():
        return CCAStatistics({"pair": ["cbr1", "cbr2"]}, pool=8)

    merged = feed(new(), 0, 7).merge(feed(new(), 7, 16))
    merged.save(tmp_path / "s.pt")
    back = CCAStatistics.load(tmp_path / "s.pt")
    for method in OPS:
        for stats in (feed(new(), 0, 16), merged, back):
            assert abs(_stat(stats, method, "cbr1", "cbr2").mean - want[method]) < 1e-6, method


def test_float32_statistics_carry_an_error_estimate_that_holds():
    x, y = _pair(n=3000)
    stats = _stream({"x": x, "y": y}, 1000, precision="float32")
    for method in OPS:
        r = _stat(stats, method, "x", "y")
        assert r.dtype == "float32" and r.error_estimate is not None
        assert abs(r.mean - REFS[method](x, y)) <= r.error_estimate


def test_rebase_is_exact():
    """Row-norm sums accumulated around one shift, rebased to another, equal those accumulated
    around the other directly."""
    x, y = _pair(n=700, dtype=torch.float64)
    xs = [x, y]
    widths = [x.shape[1], y.shape[1]]
    s1 = G.first_chunk_shift(xs, 64, torch.float64)
    s2 = s1 + torch.linspace(-3, 5, s1.numel(), dtype=torch.float64)

    def stats(shift):
        gram, colsum, _ = G.gram_pass(xs, shift, 64, dtype=torch.float64)
        return colsum, gram, S.row_norm_sums(xs, shift, 64)

    c1, g1, r1 = stats(s1)
    c2, g2, r2 = stats(s2)
    colsum, gram, rows = _rebase(700, s1, c1, g1, s2, r1, widths)
    torch.testing.assert_close(colsum, c2, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(gram, g2, rtol=1e-12, atol=1e-7)
    for got, want in zip(rows, r2):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-6)
    assert _rebase(700, s1, c1, g1, s2)[1].shape == g1.shape  # without rows: (colsum, gram)


@pytest.mark.slow
def test_all_reduce_two_processes():
    x, y = _pair(n=2000, dtype=torch.float64)
    layers = {"a": x, "b": y + 0.0, "c": x[:, :5] * 2}
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.pt")
        torch.multiprocessing.spawn(_all_reduce_worker, args=(2, os.path.join(d, "init"), layers, out),
                                    nprocs=2)
        got = torch.load(out)
    full = _stream(layers, 300)
    for method in OPS:
        assert abs(got[method] - REFS[method](x, y)) < 1e-9
        assert abs(got[method] - _stat(full, method, "a", "b").mean) < 1e-10


def _all_reduce_worker(rank, world, init_file, layers, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = layers["a"].shape[0]
        # rank 1's data starts far off rank 0's shift: the all_reduce rebases around rank 0's
        part = {k: v[rank * n // world:(rank + 1) * n // world] for k, v in layers.items()}
        stats = _stream(part, 300).all_reduce()
        if rank == 0:
            torch.save({m: _stat(stats, m, "a", "b").mean for m in OPS}, out)
    finally:
        dist.destroy_process_group()


# ---- known values and invariances ---------------------------------------------------------------

def test_independent_gaussian_layers():
    """Kornblith et al.: for independent 64 x 50 Gaussian layers the biased CKA is near 0.45 (the
    bias towards 1 of few datapoints: its expectation is about n a b / (n^2 a + n a^2) = 0.44),
    the debiased one near 0 (measured over 20 seeds: biased 0.405 to 0.458, mean 0.437;
    debiased |.| <= 0.044)."""
    biased_values = []
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(64, 50, generator=g), torch.randn(64, 50, generator=g)
        with pytest.warns(RuntimeWarning, match="biased towards 1"):
            biased = cka(x, y)
        assert abs(biased.mean - 0.44) < 0.05 and biased.few_datapoints
        biased_values.append(biased.mean)
        d = debiased(x, y)
        assert abs(d.mean) < 0.05 and not d.few_datapoints and d.debiased
        assert abs(d.mean - R.cka_debiased(x, y)) < 1e-6
        assert abs(biased.mean - R.cka(x, y)) < 1e-6
    assert abs(sum(biased_values) / 5 - 0.44) < 0.02


@pytest.mark.parametrize("method", list(OPS))
def test_identical_layers_and_invariances(method):
    x, y = _pair(n=800, dtype=torch.float64)
    op = OPS[method]
    assert op(x, x).mean == pytest.approx(1.0, abs=1e-12)
    assert op(y, y).mean == pytest.approx(1.0, abs=1e-12)
    base = op(x, y).mean
    g = torch.Generator().manual_seed(3)
    qx = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))[0]
    qy = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    for xt, yt in ((x @ qx, y), (x, y @ qy), (3.7 * x, y), (x, 0.01 * y), (x + 100.0, y - 7.0)):
        assert op(xt, yt).mean == pytest.approx(base, abs=1e-9)
    assert op(y, x).mean == pytest.approx(base, abs=1e-12)  # symmetric


def test_procrustes_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 10, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0]
    assert procrustes(x, x @ q).mean == pytest.approx(1.0, abs=1e-12)  # a rotation: identical
    assert procrustes(x, -x).mean == pytest.approx(1.0, abs=1e-12)
    # distance 2 - 2 x similarity of Ding et al.: a constant layer has no variance -> 0
    assert procrustes(x, torch.ones(500, 3, dtype=torch.float64)).mean == 0.0


# ---- defaults, errors, results ------------------------------------------------------------------

def test_default_cka_unchanged():
    x, y = _pair()
    r = cka(x, y)
    assert not r.debiased and r.mean == cka(x, y, debiased=False).mean
    assert abs(r.mean - R.cka(x, y)) < 1e-6


def test_errors():
    x, y = _pair(n=3, dtype=torch.float64)
    assert cka(x, y).n == 3  # biased CKA: n >= 2
    with pytest.raises(InputError, match="at least 4 datapoints"):
        cka(x, y, debiased=True)
    assert debiased(*_pair(n=4, dtype=torch.float64)).n == 4
    with pytest.raises(InputError, match="debiased=True is for method='cka'"):
        S.finalise_many("procrustes", [S.pair_moments(x, y, row_norms=True)], debiased=True)
    stats = _stream({"x": x, "y": y}, 2)
    with pytest.raises(InputError, match="at least 4 datapoints"):
        stats.cka("x", "y", debiased=True)
    with pytest.raises(InputError, match="debiased=True is for method='cka'"):
        stats.similarity("x", "y", "svcca", debiased=True)


def test_statistics_without_row_norms_still_answer_the_rest(tmp_path):
    """Files saved before the row-norm sums existed load; debiased CKA says what to do."""
    x, y = _pair(n=500)
    stats = _stream({"x": x, "y": y}, 200)
    state = stats.state_dict()
    for k in ("row_products", "row_sums", "row_totals"):
        del state["groups"]["g"][k]
    old = CCAStatistics.from_state_dict(state)
    assert old.procrustes("x", "y").mean == pytest.approx(stats.procrustes("x", "y").mean, abs=1e-14)
    with pytest.raises(InputError, match="accumulate the statistics again"):
        old.cka("x", "y", debiased=True)
    merged = _stream({"x": x, "y": y}, 200).merge(old)  # merging with one drops them too
    assert merged.cka("x", "y").n == 1000
    with pytest.raises(InputError, match="row-norm sums"):
        merged.cka("x", "y", debiased=True)


def test_results_print_serialise_and_batch():
    x, y = _pair()
    r = debiased(x, y)
    assert "debiased=True" in repr(r) and "method='cka'" in repr(r)
    back = SimilarityResult.from_dict(r.to_dict())
    assert back.debiased and back.mean == r.mean
    assert not SimilarityResult.from_dict({**cka(x, y).to_dict()}).debiased
    p = procrustes(x, y)
    assert p.method == "procrustes" and SimilarityResult.from_dict(p.to_dict()).mean == p.mean
    many = procrustes([x, y], [y, x])
    assert [m.mean for m in many] == pytest.approx([p.mean, p.mean], abs=1e-12)
    many = cka([x, y], [y, x], debiased=True)
    assert [m.mean for m in many] == pytest.approx([r.mean, r.mean], abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_in_memory_and_streamed_match_oracle(tmp_path):
    x, y = _pair(n=3000)
    stats = _stream({"x": x.cuda(), "y": y.cuda()}, 700)
    stats.save(tmp_path / "s.pt")
    back = CCAStatistics.load(tmp_path / "s.pt", map_location="cuda").merge(
        _stream({"x": x.cuda() + 1, "y": y.cuda()}, 900))
    for method in OPS:
        want = REFS[method](x, y)
        assert abs(OPS[method](x.cuda(), y.cuda()).mean - want) < 1e-6
        assert abs(_stat(stats, method, "x", "y").mean - want) < 1e-6
        assert abs(_stat(back, method, "x", "y").mean
                   - REFS[method](torch.cat([x, x + 1]), torch.cat([y, y]))) < 1e-6
