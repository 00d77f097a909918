"""Bootstrap intervals (ci=), the chance floor (chance=) and RBF CKA (issue 16), in memory and
streamed, against float64 oracles in transfusion.ops.reference_cca:

  * chance: the pairing simulated one datapoint at a time (``R.chance_pairing``), then each
    method's definition on (x, y[sigma]);
  * ci: each Poisson-bootstrap replicate as a dataset with repeated rows (``R.bootstrap_values``),
    each method's definition on it, numpy's percentile of those;
  * rbf: distances from row differences, numpy's median, the centring matrix H written out.

The schemes depend only on the seed and the datapoints' order, so streamed (any batch sizes) and
in-memory results must agree to rounding; the statistical tests compare the bootstrap spread with
the spread over independent datasets, and the chance floor with what unrelated layers show.
"""
import json
import warnings

import numpy as np
import pytest
import torch

from transfusion.errors import InputError
from transfusion.models import build_model
from transfusion.ops import CCAStatistics, SimilarityResult, cca, cka, procrustes, pwcca, resampling, svcca
from transfusion.ops import reference_cca as R
from transfusion.ops import similarity as S


def _dcka(x, y, **kw):
    return cka(x, y, debiased=True, **kw)


OPS = {"svcca": svcca, "cca": cca, "pwcca": pwcca, "cka": cka, "cka_debiased": _dcka,
       "procrustes": procrustes}
REFS = {"svcca": lambda x, y: float(R.svcca(x, y).mean()), "cca": lambda x, y: float(R.cca(x, y).mean()),
        "pwcca": lambda x, y: R.pwcca(x, y)[0], "cka": R.cka, "cka_debiased": R.cka_debiased,
        "procrustes": R.procrustes}


def _stat(stats, method, a, b, **kw):
    if method == "cka_debiased":
        return stats.cka(a, b, debiased=True, **kw)
    return getattr(stats, method)(a, b, **kw)


def _pair(n, a=12, b=9, seed=0, dtype=torch.float64):
    """Two related layers (shared latent directions), offsets, a ReLU: not centred, not Gaussian."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g, dtype=torch.float64)
    f64 = torch.float64
    x = z @ torch.randn(5, a, generator=g, dtype=f64) + torch.randn(n, a, generator=g, dtype=f64)
    y = z @ torch.randn(5, b, generator=g, dtype=f64) + 2 * torch.randn(n, b, generator=g, dtype=f64)
    return (x + 3).to(dtype), (torch.relu(y) - 1).to(dtype)


def _cnn_layers(images=6, seed=0):
    """Real activations: two ReLU layers of a freshly initialised cbr_tiny on random images,
    pooled to a 4 x 4 grid: (images x 16 datapoints, channels)."""
    torch.manual_seed(seed)
    model = build_model("cbr_tiny", 2).eval()
    out = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, o, name=name: out.__setitem__(name, o.detach())) for name in ("cbr1", "cbr2")]
    with torch.no_grad():
        model(torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
    for h in hooks:
        h.remove()
    from transfusion.ops import conv_to_datapoints
    return (conv_to_datapoints(out["cbr1"], pool=4).to(torch.float64),
            conv_to_datapoints(out["cbr2"], pool=4).to(torch.float64))


# ---- chance: against the row-by-row pairing ----------------------------------------------------

@pytest.mark.parametrize("method", list(OPS))
@pytest.mark.parametrize("n", [300, 2500])  # one block (a plain permutation); ragged blocks
def test_chance_matches_oracle_pairing(method, n):
    x, y = _pair(n, seed=n)
    sigma = R.chance_pairing(n, seed=7)
    assert sorted(sigma.tolist()) == list(range(n))  # a bijection
    r = OPS[method](x, y, chance=True, seed=7)
    assert abs(r.chance - REFS[method](x, y[sigma])) < 1e-9, r
    # the value itself is untouched by chance=True
    assert r.mean == OPS[method](x, y).mean


def test_chance_pairing_never_meets_itself_after_the_first_block():
    sigma = R.chance_pairing(5000, seed=3)
    later = torch.arange(resampling.BLOCK_ROWS, 5000)
    assert not bool((sigma[later] == later).any())


@pytest.mark.parametrize("method", list(OPS))
def test_chance_float32_inputs_and_real_activations_match_oracle(method):
    x, y = _cnn_layers()
    sigma = R.chance_pairing(x.shape[0], seed=1)
    r = OPS[method](x.float(), y.float(), chance=True, seed=1)
    assert abs(r.chance - REFS[method](x.float(), y.float()[sigma])) < 1e-6, r


def test_chance_is_the_floor_of_unrelated_layers():
    """n >> neurons: near 0 even for strongly related layers; n <= neurons: CCA's artefact of 1."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 20, generator=g)
    y = x @ torch.randn(20, 20, generator=g) + torch.randn(20000, 20, generator=g)
    for method in OPS:
        r = OPS[method](x, y, chance=True)
        assert r.mean > 0.6 and abs(r.chance) < 0.05, (method, r)
    x, y = torch.randn(50, 100, generator=g), torch.randn(50, 100, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert cca(x, y, chance=True).chance > 0.999
        r = svcca(x, y, chance=True)
        assert r.chance > 0.9 and abs(r.chance - r.mean) < 0.03, r
        assert abs(_dcka(x, y, chance=True).chance) < 0.1  # the debiased estimator has no such floor


# ---- ci: against bootstrap replicates built as datasets ---------------------------------------

def _recentred(values, level, value):
    """The percentile interval of the replicates moved so that their median sits on the value."""
    lo, med, hi = np.quantile(values, [(1 - level) / 2, 0.5, (1 + level) / 2])
    return np.array([lo - med + value, hi - med + value])


@pytest.mark.parametrize("method", list(OPS))
def test_ci_matches_oracle_replicates(method):
    x, y = _pair(1300, seed=2)  # two blocks of weights
    vals = R.bootstrap_values(REFS[method], x, y, seed=4, replicates=16)
    r = OPS[method](x, y, ci=0.9, replicates=16, seed=4)
    want = _recentred(vals, 0.9, REFS[method](x, y))
    assert abs(r.ci[0] - want[0]) < 1e-9 and abs(r.ci[1] - want[1]) < 1e-9, (r.ci, want)
    assert (r.ci_level, r.replicates, r.seed) == (0.9, 16, 4)


def test_ci_on_real_float32_activations_matches_oracle():
    x, y = _cnn_layers()
    vals = R.bootstrap_values(REFS["cca"], x.float(), y.float(), seed=0, replicates=12)
    r = cca(x.float(), y.float(), ci=0.95, replicates=12)
    want = _recentred(vals, 0.95, REFS["cca"](x.float(), y.float()))
    assert np.allclose(r.ci, want, atol=1e-6, rtol=0), (r.ci, want)


@pytest.mark.parametrize("method", list(OPS))
def test_ci_brackets_the_value(method):
    x, y = _pair(4000, seed=5, dtype=torch.float32)
    r = OPS[method](x, y, ci=0.95, replicates=100)
    assert r.ci[0] < r.mean < r.ci[1], r
    assert 0 < r.ci[1] - r.ci[0] < 0.2


def test_ci_width_matches_the_spread_over_independent_datasets():
    """The bootstrap's job: its interval should be as wide as the value varies between datasets
    drawn from the same source. 90% interval ~ 2 x 1.645 standard deviations."""
    mix = torch.randn(5, 21, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def draw(seed):  # the same source each time, new datapoints
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(800, 5, generator=g, dtype=torch.float64) @ mix
        e = torch.randn(800, 21, generator=g, dtype=torch.float64)
        return z[:, :12] + e[:, :12], torch.relu(z[:, 12:] + 2 * e[:, 12:])

    values = [cka(*draw(100 + s)).mean for s in range(40)]
    spread = float(np.std(values, ddof=1))
    widths = [np.diff(cka(*draw(200 + s), ci=0.9, replicates=100, seed=s).ci)[0] for s in range(6)]
    ratio = float(np.mean(widths)) / (2 * 1.645 * spread)
    assert 0.6 < ratio < 1.6, (ratio, spread, widths)


def test_interval_is_recentred_where_the_replicates_are_shifted():
    """Few datapoints per neuron: replicates repeat datapoints, so CCA-family replicates sit
    above the value (here all of them); the interval keeps their spread around the value."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 15, generator=g), torch.randn(40, 15, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        vals = R.bootstrap_values(REFS["cca"], x, y, seed=0, replicates=50)
        r = cca(x, y, ci=0.95, replicates=50)
    assert min(vals) > r.mean  # the plain percentile interval would miss the value
    assert r.ci[0] < r.mean < r.ci[1]
    assert abs((r.ci[1] - r.ci[0]) - np.diff(np.quantile(vals, [0.025, 0.975]))[0]) < 1e-9


# ---- streamed == in memory ---------------------------------------------------------------------

@pytest.mark.parametrize("method", list(OPS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streamed_ci_and_chance_equal_in_memory(method, dtype):
    x, y = _pair(2300, seed=9, dtype=dtype)
    stats = CCAStatistics({"p": ["x", "y"]}, replicates=30, chance=True, seed=11)
    i = 0
    for rows in (700, 1, 1000, 599):  # batches that cut the 1024-row blocks anywhere
        stats.update_many({"x": x[i:i + rows], "y": y[i:i + rows]})
        i += rows
    s = _stat(stats, method, "x", "y", ci=0.9, chance=True)
    m = OPS[method](x, y, ci=0.9, replicates=30, chance=True, seed=11)
    assert abs(s.chance - m.chance) < 1e-9 and np.allclose(s.ci, m.ci, atol=1e-9, rtol=0), (s, m)
    assert abs(s.chance - REFS[method](x, y[R.chance_pairing(2300, 11)])) < 1e-6


def test_streamed_real_activations_save_load_and_query_mid_stream(tmp_path):
    x, y = _cnn_layers(images=20)
    n = x.shape[0]
    stats = CCAStatistics({"p": ["a", "b"]}, replicates=20, chance=True, seed=2)
    stats.update_many({"a": x[:100], "b": y[:100]})
    early = stats.cka("a", "b", ci=0.9, chance=True)  # a query does not disturb the state
    assert abs(early.chance - R.cka(x[:100], y[:100][R.chance_pairing(100, 2)])) < 1e-9
    stats.update_many({"a": x[100:], "b": y[100:]})
    stats.save(tmp_path / "s.pt")
    loaded = CCAStatistics.load(tmp_path / "s.pt")
    for st in (stats, loaded):
        r = st.svcca("a", "b", ci=0.9, chance=True)
        assert abs(r.chance - REFS["svcca"](x, y[R.chance_pairing(n, 2)])) < 1e-6
        assert np.allclose(r.ci, svcca(x, y, ci=0.9, replicates=20, seed=2).ci, atol=1e-9, rtol=0)
    assert stats.memory_bytes() > CCAStatistics({"p": ["a", "b"]}).memory_bytes()


def test_group_of_three_layers_gives_each_pair():
    x, y = _pair(1500, seed=3)
    w = torch.randn(1500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = CCAStatistics({"g": ["x", "w", "y"]}, replicates=4, chance=True, seed=5)
    for i in range(0, 1500, 512):
        stats.update_many({"x": x[i:i + 512], "w": w[i:i + 512], "y": y[i:i + 512]})
    sigma = R.chance_pairing(1500, 5)
    for a, b, ta, tb in (("x", "y", x, y), ("y", "w", y, w), ("w", "x", w, x)):
        r = stats.cka(a, b, debiased=True, chance=True, ci=0.9)
        assert abs(r.chance - R.cka_debiased(ta, tb[sigma])) < 1e-9
        vals = R.bootstrap_values(R.cka_debiased, ta, tb, seed=5, replicates=4)
        assert np.allclose(r.ci, _recentred(vals, 0.9, R.cka_debiased(ta, tb)), atol=1e-9, rtol=0)


# ---- defaults unchanged, serialisation, errors ---------------------------------------------------

def test_defaults_are_unchanged_and_results_round_trip():
    x, y = _pair(600, seed=1, dtype=torch.float32)
    plain = svcca(x, y)
    assert plain.ci is None and plain.chance is None
    assert set(plain.to_dict()) == {"method", "mean", "n", "kept", "dtype", "keep", "rtol", "condition",
                                    "coefficients", "weights", "dropped", "few_datapoints",
                                    "error_estimate", "debiased"}
    full = svcca(x, y, ci=0.8, replicates=10, chance=True, seed=3)
    assert full.mean == plain.mean and torch.equal(full.coefficients, plain.coefficients)
    for r in (full, cka(x, y, kernel="rbf", sigma=0.5), plain):
        back = SimilarityResult.from_dict(json.loads(r.to_json()))
        assert back.to_dict() == r.to_dict()
        assert (back.ci, back.chance, back.kernel, back.sigma) == (r.ci, r.chance, r.kernel, r.sigma)
    assert "ci=(" in repr(full) and "chance=" in repr(full)


@pytest.mark.parametrize("kw", [dict(ci=0.0), dict(ci=1.0), dict(ci=1.5), dict(ci="0.9"),
                                dict(ci=0.9, replicates=1), dict(ci=0.9, replicates=2.5),
                                dict(chance=True, seed=-1)])
def test_bad_options_are_one_line_errors(kw):
    x, y = _pair(100)
    with pytest.raises(InputError) as e:
        cca(x, y, **kw)
    assert "\n" not in str(e.value)


def test_nan_and_stream_errors():
    x, y = _pair(100)
    x[3, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        svcca(x, y, ci=0.9, chance=True)
    with pytest.raises(InputError, match="NaN"):
        cka(x, y, kernel="rbf")
    x, y = _pair(100)
    plain = CCAStatistics({"p": ["x", "y"]})
    plain.update_many({"x": x, "y": y})
    with pytest.raises(InputError, match="replicates=200"):
        plain.svcca("x", "y", ci=0.9)
    with pytest.raises(InputError, match="chance=True"):
        plain.cka("x", "y", chance=True)
    with pytest.raises(InputError, match="in memory only"):
        plain.cka("x", "y", kernel="rbf")
    other = CCAStatistics({"p": ["x", "y"]}, chance=True)
    other.update_many({"x": x, "y": y})
    with pytest.raises(InputError, match="do not merge"):
        plain.merge(other)
    with pytest.raises(InputError, match="replicates must be"):
        CCAStatistics(replicates=1)
    with pytest.raises(InputError, match="ci must be"):
        other.cka("x", "y", ci=2)


# ---- RBF CKA -------------------------------------------------------------------------------------

@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("sigma", [0.4, 1.0])
def test_rbf_cka_matches_oracle(debiased, sigma):
    for x, y in (_pair(301, seed=4), _cnn_layers(images=3)):
        want = R.rbf_cka(x, y, sigma, debiased)
        assert abs(cka(x, y, kernel="rbf", sigma=sigma, debiased=debiased).mean - want) < 1e-9
        r = cka(x.float(), y.float(), kernel="rbf", sigma=sigma, debiased=debiased)
        assert abs(r.mean - R.rbf_cka(x.float(), y.float(), sigma, debiased)) < 1e-6
        assert (r.kernel, r.sigma, r.debiased, r.n) == ("rbf", sigma, debiased, x.shape[0])


def test_rbf_cka_refuses_what_it_cannot_do(monkeypatch):
    x, y = _pair(200)
    for kw in (dict(ci=0.9), dict(chance=True)):
        with pytest.raises(InputError, match="rbf"):
            cka(x, y, kernel="rbf", **kw)
    for kw in (dict(kernel="poly"), dict(kernel="rbf", sigma=0), dict(kernel="rbf", sigma=float("inf"))):
        with pytest.raises(InputError):
            cka(x, y, **kw)
    rs = cka([x[:100], x], [y[:100], y], kernel="rbf")  # batched
    assert [r.n for r in rs] == [100, 200]
    monkeypatch.setattr(S, "RBF_MAX_DATAPOINTS", 150)
    with pytest.raises(InputError, match="above the limit of 150") as e:
        cka(x, y, kernel="rbf")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="median"):
        cka(torch.ones(20, 3), y[:20], kernel="rbf")
