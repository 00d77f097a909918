"""(SV)CCA, PWCCA, CKA against the float64 QR/SVD reference (transfusion.ops.reference_cca)."""
import json
import math

import pytest
import torch

from transfusion.errors import InputError
from transfusion.ops import SimilarityResult, cca, cka, conv_to_datapoints, dispatch, pwcca, svcca
from transfusion.ops import gram as G
from transfusion.ops import reference_cca as R

FLOAT32_TOL = 1e-6  # the target: mean correlation within 1e-6 of the float64 reference


def _pair(n=2000, a=24, b=16, seed=0, dtype=torch.float32):
    """Two layers sharing a few latent directions, with offsets (non-centred) and mixing."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g, dtype=torch.float64)
    x = z @ torch.randn(8, a, generator=g, dtype=torch.float64) + torch.randn(n, a, generator=g, dtype=torch.float64)
    y = (z @ torch.randn(8, b, generator=g, dtype=torch.float64)
         + 2 * torch.randn(n, b, generator=g, dtype=torch.float64))
    return (x + 3).to(dtype), (torch.relu(y) - 1).to(dtype)


REFS = {
    "svcca": lambda x, y: float(R.svcca(x, y).mean()),
    "cca": lambda x, y: float(R.cca(x, y).mean()),
    "pwcca": lambda x, y: R.pwcca(x, y)[0],
    "cka": R.cka,
}
OPS = {"svcca": svcca, "cca": cca, "pwcca": pwcca, "cka": cka}


@pytest.mark.parametrize("method", list(OPS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, FLOAT32_TOL), (torch.float64, 1e-10)])
def test_matches_reference(method, dtype, tol):
    x, y = _pair(dtype=dtype)
    r = OPS[method](x, y)
    assert abs(r.mean - REFS[method](x, y)) < tol
    if method in ("svcca", "cca"):
        ref = R.svcca(x, y) if method == "svcca" else R.cca(x, y)
        assert r.coefficients.shape == ref.shape
        assert torch.allclose(r.coefficients, ref, atol=1e-5)


def test_torch_pass_and_kernel_agree():
    x, y = _pair(n=5000)
    shift = G.first_chunk_shift([x, y], 1000)
    g1, s1, q1 = G.gram_pass_torch([x, y], shift.float(), 1000)
    g2, s2, q2 = G.gram_pass([x, y], shift, 1000)
    assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-3) and torch.allclose(s1, s2, rtol=1e-6, atol=1e-3)
    exact = torch.cat([x, y], 1).double() - shift
    assert torch.allclose(g2, exact.T @ exact, rtol=1e-5, atol=1e-2)
    # chunk_sq: per-chunk squared column norms of the shifted data (5 chunks of 1000 rows)
    per_chunk = (exact.view(5, 1000, -1) ** 2).sum(dim=1)
    assert q1.shape == q2.shape == (5, x.shape[1] + y.shape[1])
    assert torch.allclose(q1, per_chunk, rtol=1e-5) and torch.allclose(q2, per_chunk, rtol=1e-5)
    assert torch.allclose(q2.sum(0), torch.diagonal(g2), rtol=1e-12)
    assert G.chunk_lengths(5000, 1000).tolist() == [1000.0] * 5
    assert G.chunk_lengths(4500, 1000).tolist() == [1000.0] * 4 + [500.0]


@pytest.mark.skipif(not dispatch.has_kernel("gram_pass", "cpu"), reason="compiled op not built")
def test_op_opcheck():
    x, y = _pair(n=300, a=5, b=3)
    shift = G.first_chunk_shift([x, y], 64).float()
    torch.library.opcheck(torch.ops.transfusion.gram_pass.default, ([x, y], shift, 64, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("method", ["svcca", "cca", "pwcca", "cka"])
def test_identical_inputs_give_one(method):
    x, _ = _pair()
    assert OPS[method](x, x).mean == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("method", ["svcca", "cca", "cka"])
def test_invariances(method):
    x, y = _pair()
    base = OPS[method](x, y).mean
    q, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=torch.Generator().manual_seed(1)))
    perm = torch.randperm(y.shape[1], generator=torch.Generator().manual_seed(2))
    assert OPS[method](x @ q, y).mean == pytest.approx(base, abs=1e-6)       # orthogonal
    assert OPS[method](x * 7.5, y * 0.01).mean == pytest.approx(base, abs=1e-6)  # isotropic scale
    assert OPS[method](x, y[:, perm]).mean == pytest.approx(base, abs=1e-6)  # neuron permutation
    assert OPS[method](y, x).mean == pytest.approx(base, abs=1e-6)           # symmetric


def test_closed_form_noise():
    # x ~ N(0, I_a); y = x R + e, R orthogonal, e ~ N(0, s^2 I): every canonical correlation is
    # cov / sqrt(var_x var_y) = 1 / sqrt(1 + s^2); sampling error is O(sqrt(a / n)).
    n, a, s = 40000, 6, 0.75
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, a, generator=g, dtype=torch.float64)
    rot, _ = torch.linalg.qr(torch.randn(a, a, generator=g, dtype=torch.float64))
    y = x @ rot + s * torch.randn(n, a, generator=g, dtype=torch.float64)
    r = cca(x.float(), y.float())
    expected = 1 / math.sqrt(1 + s**2)
    assert torch.allclose(r.coefficients, torch.full((a,), expected, dtype=torch.float64), atol=0.01)
    # linear CKA closed form for this model: ||R||_F^2 / (||I|| ||(1+s^2) I||) = 1 / (1 + s^2)
    assert cka(x, y).mean == pytest.approx(1 / (1 + s**2), abs=0.01)


def test_rank_deficient_dead_and_duplicated():
    x, y = _pair(a=20, b=12)
    x = torch.cat([x, torch.zeros(x.shape[0], 3), x[:, :4], torch.full((x.shape[0], 2), 5.0)], 1)
    y = torch.cat([y, y[:, :3] * 2.0], 1)
    for method in OPS:
        r = OPS[method](x, y)
        assert math.isfinite(r.mean) and not torch.isnan(r.coefficients).any()
        assert abs(r.mean - REFS[method](x, y)) < 1e-5
    assert cca(x, y).kept == (20, 12)  # the subspace that exists


@pytest.mark.parametrize("n", [30, 45])
def test_wide_and_n_close_to_width(n):
    x, y = _pair(n=n, a=40, b=25)
    for method in ("svcca", "cca"):
        r = OPS[method](x, y)
        assert math.isfinite(r.mean)
        assert abs(r.mean - REFS[method](x, y)) < 1e-5
    # n - 1 < a + b: many correlations are exactly 1, so the canonical variates (and PWCCA's
    # weights) are not unique; only finiteness and range are defined.
    r = pwcca(x, y)
    assert 0.0 <= r.mean <= 1.0 and torch.isfinite(r.weights).all()


def test_auto_precision_meets_target_on_ill_conditioned_data():
    g = torch.Generator().manual_seed(4)
    n, a = 6000, 40
    scales = torch.logspace(0, -3.5, a, dtype=torch.float64)
    z = torch.randn(n, a, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(a, a, generator=g, dtype=torch.float64))
    x = ((z * scales) @ q + 2).float()
    y = ((z + 0.3 * torch.randn(n, a, generator=g, dtype=torch.float64)) * scales @ q.T).float()
    r = cca(x, y)
    assert r.dtype == "float64"  # redone because the condition is large
    assert abs(r.mean - REFS["cca"](x, y)) < FLOAT32_TOL
    assert abs(pwcca(x, y).mean - REFS["pwcca"](x, y)) < FLOAT32_TOL
    assert cca(x, y, precision="float32").dtype == "float32"


def test_batched_equals_one_by_one():
    pairs = [_pair(a=a, b=b, seed=s) for s, (a, b) in enumerate([(24, 16), (10, 30), (24, 16), (5, 5)])]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    for method in OPS:
        batch = OPS[method](xs, ys)
        assert len(batch) == len(pairs)
        for r, (x, y) in zip(batch, pairs):
            one = OPS[method](x, y)
            assert r.mean == pytest.approx(one.mean, abs=1e-12) and r.kept == one.kept


def test_numpy_and_layout():
    x, y = _pair()
    r = svcca(x, y)
    assert svcca(x.numpy(), y.numpy()).mean == pytest.approx(r.mean, abs=1e-12)
    assert svcca(x.numpy().T, y.numpy().T, layout="neurons_first").mean == pytest.approx(r.mean, abs=1e-12)
    # half inputs are computed in float32 GEMMs (never float16); under "auto" a problem this small
    # takes float64 GEMMs outright (transfusion.ops.precision.FLOAT64_FREE_MACS)
    assert svcca(x.half(), y.half(), precision="float32").dtype == "float32"
    assert svcca(x.half(), y.half()).dtype == "float64"
    assert cca(x.to(torch.int64), y).n == x.shape[0]


def test_result_prints_and_serialises():
    r = pwcca(*_pair())
    text = repr(r)
    assert "pwcca" in text and "mean=" in text and str(r.kept) in text
    d = json.loads(r.to_json())
    assert d["method"] == "pwcca" and len(d["coefficients"]) == min(r.kept) and d["weights"]
    back = SimilarityResult.from_dict(d)
    assert back.mean == r.mean and torch.equal(back.coefficients, r.coefficients)
    assert float(r) == r.mean


@pytest.mark.parametrize("bad,msg", [
    (lambda x, y: (x.clone().index_fill_(0, torch.tensor([3]), float("nan")), y), "NaN"),
    (lambda x, y: (x, y.clone().index_fill_(0, torch.tensor([0]), float("inf"))), "y contains NaN or Inf"),
    (lambda x, y: (x[:1], y[:1]), "at least 2"),
    (lambda x, y: (x[:100], y), "same number of datapoints"),
    (lambda x, y: (x.reshape(-1, 2, 2, x.shape[1]), y), "conv_to_datapoints"),
    (lambda x, y: (x[:, :0], y), "at least one neuron"),
])
def test_clear_errors(bad, msg):
    x, y = _pair(n=200)
    with pytest.raises(InputError, match=msg):
        svcca(*bad(x, y))


def test_bad_arguments():
    x, y = _pair(n=200)
    with pytest.raises(InputError, match="keep"):
        svcca(x, y, keep=1.5)
    with pytest.raises(InputError, match="layout"):
        svcca(x, y, layout="nd")
    with pytest.raises(InputError, match="lists"):
        svcca([x], y)


def test_conv_to_datapoints():
    act = torch.randn(4, 3, 6, 8)
    out = conv_to_datapoints(act, warn=False)
    assert out.shape == (4 * 48, 3)
    assert torch.equal(out[8 * 2 + 5], act[0, :, 2, 5])  # row-major positions, image by image
    assert conv_to_datapoints(act, pool=2, warn=False).shape == (16, 3)
    sub = conv_to_datapoints(act, max_positions=10, seed=7, warn=False)
    assert sub.shape == (40, 3)
    assert torch.equal(sub, conv_to_datapoints(act, max_positions=10, seed=7, warn=False))
    with pytest.warns(RuntimeWarning, match="datapoints"):
        conv_to_datapoints(torch.randn(1, 64, 2, 2))


def test_torch_compile_caller():
    x, y = _pair(n=500)
    f = torch.compile(lambda a, b: svcca(a, b).mean, backend="eager")
    assert f(x, y) == pytest.approx(svcca(x, y).mean, abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_equals_cuda():
    x, y = _pair(n=5000)
    for method in OPS:
        cpu = OPS[method](x, y)
        gpu = OPS[method](x.cuda(), y.cuda())
        assert abs(cpu.mean - gpu.mean) < 1e-6
        assert abs(gpu.mean - REFS[method](x, y)) < FLOAT32_TOL


def _offset_layers(seed):
    """Small layers with offset means and a ReLU (as tests/ops/test_svcca_streaming.py): float32
    Grams of these lose ~1e-6 per entry, which PWCCA's weights amplified to 3.9e-6 (seed 6)."""
    g = torch.Generator().manual_seed(seed)
    n = 3000
    z = torch.randn(n, 6, generator=g)
    a = z @ torch.randn(6, 20, generator=g) + 0.5 * torch.randn(n, 20, generator=g) + 4
    b = torch.relu(z @ torch.randn(6, 12, generator=g) + torch.randn(n, 12, generator=g))
    c = torch.randn(n, 9, generator=g) + a[:, :9]
    return a, b, c


@pytest.mark.parametrize("seed", [0, 6])
def test_auto_precision_meets_target_on_offset_layers(seed):
    a, b, c = _offset_layers(seed)
    for method in ("svcca", "cca", "pwcca"):
        for x, y in ((a, b), (b, c), (a, c)):
            want = OPS[method](x.double(), y.double()).mean
            assert abs(OPS[method](x, y).mean - want) < FLOAT32_TOL, method
    assert pwcca(b, c).dtype == "float64"
    assert pwcca(b, c, precision="float32").dtype == "float32"


def test_extreme_scale_gives_the_float64_answer():
    # issue 12: float32 cka(X * 1e-25, Y) was 2.1e15 and svcca 0.0; both must match float64
    x, y = _pair()
    for method in ("svcca", "cka"):
        want = OPS[method](x.double(), y.double()).mean
        got = OPS[method](x * 1e-25, y).mean
        assert 0.0 <= got <= 1.0
        assert abs(got - want) < FLOAT32_TOL, method


def test_large_offset_neurons_are_not_dropped():
    # issue 12: float64 svcca(1e3 + 1e-3 X, Y) dropped 10 of 20 neurons; at 1e4 it returned 0.0
    x, y = _pair(dtype=torch.float64)
    want = svcca(x, y).mean
    for offset in (1e3, 1e4):
        r = svcca(offset + 1e-3 * x, y)
        assert r.dropped == ((), ())
        assert r.mean == pytest.approx(want, abs=1e-6)


def test_dead_neurons_are_reported():
    x, y = _pair()
    x = x.clone()
    x[:, 3] = 0.0
    with pytest.warns(RuntimeWarning, match="dead"):
        r = cca(x, y)
    assert r.dropped == ((3,), ())


@pytest.mark.parametrize("method", list(OPS))
def test_few_datapoints_warn_and_flag(method):
    # issue 12: svcca(randn(10, 50), randn(10, 50)) was 1.000 without a word
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 50, generator=g), torch.randn(10, 50, generator=g)
    with pytest.warns(RuntimeWarning, match="biased towards"):
        r = OPS[method](x, y)
    assert r.few_datapoints
    assert not OPS[method](*_pair(n=2000, a=24, b=16)).few_datapoints


def test_small_problems_run_side_by_side_in_order_with_the_same_results():
    """eigh / SVD of independent sides and pairs run on the threads torch had, one torch thread
    each; the results are those of one call after another, in the input order."""
    import threading

    from transfusion.ops import similarity as S

    g = torch.Generator().manual_seed(3)
    mats = [(lambda a: a @ a.T)(torch.randn(w, w + 5, dtype=torch.float64, generator=g))
            for w in (30, 0, 12, 30)]
    before = torch.get_num_threads()
    names: set[str] = set()

    def eigh_noting_thread(m):
        names.add(threading.current_thread().name)
        return S._eigh_descending(m)

    try:
        torch.set_num_threads(2)
        with S._small_linalg_threads(torch.device("cpu")):
            assert torch.get_num_threads() == 1
            side_by_side = S._map_side_by_side(eigh_noting_thread, mats)
            many = S._eigh_many(mats)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert all(n.startswith("transfusion-linalg") for n in names)
    for m, (lam, vec), (lam2, vec2) in zip(mats, side_by_side, many, strict=True):
        ref_lam, ref_vec = torch.linalg.eigh(m) if m.numel() else (m.new_zeros(0), m.new_zeros(0, 0))
        assert torch.equal(lam, ref_lam.flip(0)) and torch.equal(vec, ref_vec.flip(1))
        assert torch.equal(lam2, lam) and torch.equal(vec2, vec)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_pairs_sharing_one_pass_give_the_per_pair_results(monkeypatch, dtype):
    """The many-pairs path: pairs with the same n, device and GEMM dtype share one
    gram_pass_groups sweep (on CUDA by default; forced onto the CPU here). Every method, and
    debiased CKA (row-norm sums), equals the pass-per-pair result; the pair with another n and the
    cap on the joint Gram's bytes split the batches."""
    from transfusion.ops import similarity as S

    g = torch.Generator().manual_seed(5)
    shapes = [(3000, 12, 9), (3000, 20, 5), (2000, 7, 7), (3000, 16, 16)]
    xs = [torch.randn(n, a, generator=g, dtype=dtype) + 2 for n, a, _ in shapes]
    ys = [x[:, :b] @ torch.randn(b, b, generator=g, dtype=dtype) / 3
          + torch.randn(x.shape[0], b, generator=g, dtype=dtype) for x, (_, _, b) in zip(xs, shapes)]
    calls = []
    real = S._gram.gram_pass_groups
    monkeypatch.setattr(S._gram, "gram_pass_groups", lambda *a, **k: calls.append(a[2]) or real(*a, **k))

    def every_method():
        out = [f(xs, ys) for f in (svcca, cca, pwcca, cka)] + [cka(xs, ys, debiased=True)]
        return [[r.mean for r in rs] for rs in out]

    monkeypatch.setattr(S, "BATCHED_PASS_DEVICES", set())
    apart = every_method()
    assert calls == []
    monkeypatch.setattr(S, "BATCHED_PASS_DEVICES", {"cpu"})
    together = every_method()
    assert calls and all(sizes == [2, 2, 2] for sizes in calls)  # pairs 0, 1, 3; pair 2 (n 2000) alone
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for a, b in zip(apart, together, strict=True):
        assert a == pytest.approx(b, abs=tol)
    monkeypatch.setattr(S, "BATCHED_PASS_BYTES", (12 + 9 + 20 + 5) ** 2 * 8)
    pairs = list(zip(xs, ys))
    assert S._batched_passes(pairs, [dtype] * 4) == [[0, 1], [2], [3]]
