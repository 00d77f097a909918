"""(SV)CCA, PWCCA, linear CKA and Procrustes similarity between two layers' activations, fast and in
float64 where it counts.

    >>> r = svcca(x, y)            # x (n, a), y (n, b): datapoints by neurons
    >>> r.mean, r.coefficients, r.kept
    >>> svcca([x1, x2], [y1, y2])  # batched: a list of results, pairs of any widths

How: one pass over the n datapoints computes the float64 cross-product statistics of [x, y]
(``transfusion.ops.gram``: shifted float32 GEMMs per chunk, accumulated in float64); everything
after that works on (a+b)^2 numbers in float64:

  * each side: eigendecomposition of its centred covariance C = V diag(l) V^T. SVCCA keeps the
    fewest top directions whose variances l reach ``keep`` of the total (docs/paper.md: 99%); CCA keeps
    every direction of the standardised covariance (each neuron scaled to unit variance) whose
    variance exceeds ``rtol`` times the largest. ``rtol`` is the only regularisation: directions
    below it are treated as absent (rank deficiency: dead units, duplicated neurons, n close to a),
    so a rank-deficient layer gives the correlations of the subspace that exists, never NaN.
    Neurons whose variation is within rounding of their own magnitude (constant, dead) are dropped
    and reported (result.dropped).
  * W = V_k diag(l_k)^-1/2 whitens the kept directions, so Q = X_c W is an orthonormal basis; the
    canonical correlations are the singular values of W_x^T C_xy W_y (= Q_x^T Q_y).
  * PWCCA (Morcos et al. 2018) weights correlation i by alpha_i = sum_j |<h_i, x_j>| with h_i the
    unit-norm canonical variate of x and x_j the centred neurons of x; weights from the FIRST
    argument, as in google/svcca's compute_pwcca (swap the arguments for the other side).
    When correlations repeat (e.g. n - 1 < a + b gives many exact 1s) the canonical variates,
    hence the weights, are not unique: PWCCA is then ill-defined (finite, but basis-dependent).
  * linear CKA (Kornblith et al. 2019) = ||C_xy||_F^2 / (||C_xx||_F ||C_yy||_F). ``debiased=True``:
    the unbiased HSIC estimator (Song et al. 2012) in place of ||C||_F^2, as in Kornblith's CKA
    colab ``feature_space_linear_cka(..., debiased=True)``: with K = X_c X_c^T, L = Y_c Y_c^T,
    n(n-3) HSIC_1(K, L) = ||C_xy||_F^2 - n/(n-2) sum_i ||x_i||^2 ||y_i||^2
    + tr C_xx tr C_yy / ((n-1)(n-2)) (x_i, y_i the centred rows; K's diagonal is what it removes).
    The sum over rows comes, in the same pass, from per-datapoint row norms of the shifted data
    (``row_norm_sums``: sum_i p_i p_i^T, sum_i p_i z_i, sum_i p_i with p_i^l = ||z_i^l||^2 per
    layer), centred exactly in float64 (``moments_from_sums``): memory independent of n. Needs n >= 4.
  * orthogonal Procrustes similarity = ||C_xy||_* / sqrt(tr C_xx tr C_yy) (nuclear norm: the largest
    <X_c, Y_c R> over orthogonal R, of the Frobenius-normalised centred layers; in [0, 1]; Ding et al.
    2021's distance is 2 - 2 x this).

The float64 oracle is ``transfusion.ops.reference_cca`` (QR/SVD on the full data).
Differences to google/svcca's ``cca_core.get_cca_similarity``: (n, neurons) layout by default
(``layout="neurons_first"`` takes theirs), no epsilon added to the covariances (``rtol`` instead),
and ``mean`` is the mean of all canonical correlations (theirs uses a 0.98 cumulative threshold).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from transfusion.errors import InputError
from transfusion.ops import gram as _gram
from transfusion.ops import precision as _precision
from transfusion.ops import resampling as _resampling

log = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-6
# precision="auto" keeps float32 GEMMs only where the rounding model of transfusion.ops.precision
# puts the mean within AUTO_TARGET (1e-6) of the float64 result; see that module.
AUTO_TARGET = _precision.AUTO_TARGET
# CCA-family values are biased towards 1 below this many datapoints per neuron (exactly 1 at or
# below one datapoint per neuron).
MIN_DATAPOINTS_PER_NEURON = 10
LAYOUTS = ("datapoints_first", "neurons_first")
METHODS = ("svcca", "cca", "pwcca", "cka", "procrustes")
# methods whose result is one number with no canonical correlations (kept = the layers' widths)
_WHOLE_LAYER = ("cka", "procrustes")
# cka(kernel="rbf"): bandwidth as a fraction of the median distance (Kornblith's colab default
# threshold=1.0) and the largest n (its n x n kernels: about 3 x n^2 x 8 bytes, 2.4 GB here)
KERNELS = ("linear", "rbf")
RBF_SIGMA = 1.0
RBF_MAX_DATAPOINTS = 10_000


@dataclass
class SimilarityResult:
    """One similarity between two layers.

    method: "svcca" | "cca" | "pwcca" | "cka" | "procrustes"; mean: the similarity (mean canonical
    correlation; for pwcca the projection-weighted mean; for cka / procrustes their value);
    coefficients: canonical correlations, descending, float64 on the CPU (empty for cka and
    procrustes); kept: directions kept per side (cka, procrustes: the widths); n: datapoints;
    dtype: the dtype of the Gram pass; debiased: cka from the unbiased HSIC; weights: pwcca's alphas;
    dropped: constant (dead) neurons left out, per side; few_datapoints: fewer than 10 datapoints
    per neuron (the value is biased towards 1); error_estimate: for a float32 Gram pass, the
    modelled rounding error of ``mean`` (4 standard deviations).
    """

    method: str
    mean: float
    coefficients: torch.Tensor
    kept: tuple[int, int]
    n: int
    dtype: str
    keep: float | None = None
    rtol: float | None = None
    condition: float | None = None  # largest / smallest kept variance, worst side
    weights: torch.Tensor | None = field(default=None, repr=False)
    # neurons left out as constant (dead) per side, as indices into x's and y's columns
    dropped: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    # n < MIN_DATAPOINTS_PER_NEURON x the wider layer: the value is biased towards 1
    few_datapoints: bool = False
    # float32 Gram pass only: modelled rounding error of ``mean`` (transfusion.ops.precision)
    error_estimate: float | None = None
    # cka only: from the unbiased HSIC estimator (Song et al. 2012), not the biased one
    debiased: bool = False
    # ci=...: the bootstrap percentile interval of ``mean`` (transfusion.ops.resampling), its level,
    # the replicates and the seed it came from
    ci: tuple[float, float] | None = None
    ci_level: float | None = None
    replicates: int | None = None
    seed: int | None = None
    # chance=True: the value with x's and y's datapoints re-paired at random (unrelated layers' floor)
    chance: float | None = None
    # cka only: "linear" or "rbf" (sigma: the bandwidth as a fraction of the median distance)
    kernel: str = "linear"
    sigma: float | None = None

    def __float__(self) -> float:
        return float(self.mean)

    def __repr__(self) -> str:
        c = self.coefficients.tolist()
        shown = ", ".join(f"{v:.4f}" for v in (c if len(c) <= 6 else c[:3] + c[-2:]))
        if len(c) > 6:
            shown = shown.rsplit(", ", 2)[0] + ", ..., " + ", ".join(f"{v:.4f}" for v in c[-2:])
        extra = ", debiased=True" if self.debiased else ""
        if any(self.dropped):
            extra += f", dropped=({len(self.dropped[0])}, {len(self.dropped[1])})"
        if self.few_datapoints:
            extra += ", few_datapoints=True"
        if self.kernel != "linear":
            extra += f", kernel={self.kernel!r}, sigma={self.sigma}"
        if self.ci is not None:
            extra += f", ci=({self.ci[0]:.6f}, {self.ci[1]:.6f})"
        if self.chance is not None:
            extra += f", chance={self.chance:.6f}"
        return (f"SimilarityResult(method={self.method!r}, mean={self.mean:.6f}, n={self.n}, "
                f"kept={self.kept}, dtype={self.dtype}{extra}, coefficients=[{shown}] ({len(c)}))")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "mean": float(self.mean), "n": int(self.n),
            "kept": list(self.kept), "dtype": self.dtype, "keep": self.keep, "rtol": self.rtol,
            "condition": self.condition,
            "coefficients": [float(v) for v in self.coefficients.tolist()],
            "weights": None if self.weights is None else [float(v) for v in self.weights.tolist()],
            "dropped": [list(self.dropped[0]), list(self.dropped[1])],
            "few_datapoints": bool(self.few_datapoints), "error_estimate": self.error_estimate,
            "debiased": bool(self.debiased),
            # the optional fields only when set, so a plain result's JSON is what it always was
            **{k: v for k, v in (("ci", None if self.ci is None else [float(c) for c in self.ci]),
                                 ("ci_level", self.ci_level), ("replicates", self.replicates),
                                 ("seed", self.seed), ("chance", self.chance),
                                 ("sigma", self.sigma)) if v is not None},
            **({"kernel": self.kernel} if self.kernel != "linear" else {}),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimilarityResult":
        return cls(method=d["method"], mean=float(d["mean"]),
                   coefficients=torch.tensor(d["coefficients"], dtype=torch.float64),
                   kept=tuple(d["kept"]), n=int(d["n"]), dtype=d["dtype"], keep=d.get("keep"),
                   rtol=d.get("rtol"), condition=d.get("condition"),
                   weights=None if d.get("weights") is None else torch.tensor(d["weights"], dtype=torch.float64),
                   dropped=tuple(tuple(int(i) for i in side) for side in d.get("dropped", ((), ()))),
                   few_datapoints=bool(d.get("few_datapoints", False)),
                   error_estimate=d.get("error_estimate"), debiased=bool(d.get("debiased", False)),
                   ci=None if d.get("ci") is None else (float(d["ci"][0]), float(d["ci"][1])),
                   ci_level=d.get("ci_level"), replicates=d.get("replicates"), seed=d.get("seed"),
                   chance=d.get("chance"), kernel=d.get("kernel", "linear"), sigma=d.get("sigma"))


@dataclass
class Moments:
    """Centred float64 statistics of a pair of layers: all the similarity ops need."""

    n: int
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    cxx: torch.Tensor  # sum over datapoints of (x - mean)(x - mean)^T
    cyy: torch.Tensor
    cxy: torch.Tensor
    dtype: str  # of the Gram pass's GEMMs
    input_dtype: str = "float64"  # of the activations (decides what "constant" means)
    # float32 Gram pass only: (a+b, a+b) variance bound of each Gram entry's rounding error,
    # [x, y] order (transfusion.ops.precision.entry_variance)
    entry_var: torch.Tensor | None = None
    # debiased CKA: (2, 2) sums over datapoints of products of the centred rows' squared norms,
    # [[sum ||x_i||^4, sum ||x_i||^2 ||y_i||^2], [.., sum ||y_i||^4]]; and the means of the shifted
    # data (mean - shift) they were centred with (their Gram term's gradient, for the error model)
    row_norms: torch.Tensor | None = None
    offset_x: torch.Tensor | None = None
    offset_y: torch.Tensor | None = None

    def variance_blocks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(var_xx, var_yy, var_xy) of ``entry_var``."""
        a = self.cxx.shape[0]
        v = self.entry_var
        return v[:a, :a], v[a:, a:], v[:a, a:]


def moments_from_sums(n: int, shift: torch.Tensor, colsum: torch.Tensor, gram: torch.Tensor,
                      sx: slice, sy: slice, dtype: str, input_dtype: str = "float64",
                      entry_var: torch.Tensor | None = None,
                      rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> Moments:
    """Centre the shifted sums of a joint Gram for the columns sx (x side) and sy (y side);
    ``entry_var``: the rounding model's entry variances of the whole joint Gram (float32 only);
    ``rows``: ``row_norm_sums`` of the x and y layers only ((2, 2), (2, W), (2,), W the joint
    Gram's width), for debiased CKA."""
    def block(a: slice, b: slice) -> torch.Tensor:
        return gram[a, b] - torch.outer(colsum[a], colsum[b]) / n

    cxx, cyy = block(sx, sx), block(sy, sy)
    mean = shift + colsum / n
    var = None
    if entry_var is not None:
        cols = torch.cat([torch.arange(sx.start, sx.stop), torch.arange(sy.start, sy.stop)])
        cols = cols.to(entry_var.device)
        var = entry_var[cols][:, cols]
    m = Moments(n, mean[sx], mean[sy], (cxx + cxx.T) / 2, (cyy + cyy.T) / 2, block(sx, sy), dtype,
                input_dtype, var)
    if rows is not None:
        m.row_norms = _centred_row_norms(n, colsum, gram, sx, sy, *rows)
        m.offset_x, m.offset_y = colsum[sx] / n, colsum[sy] / n
    return m


def _centred_row_norms(n: int, colsum: torch.Tensor, gram: torch.Tensor, sx: slice, sy: slice,
                       products: torch.Tensor, sums: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """(2, 2) sum_i ||x_i - mx||^2 ||y_i - my||^2 (and x-x, y-y) from the shifted sums, exactly.

    With z_i the shifted rows, p_i = ||z_i^x||^2, q_i = ||z_i^y||^2, m, w the shifted means and
    M = ||m||^2, N = ||w||^2, the centred squared norm is p_i - 2 m.z_i^x + M, so
    sum_i (p_i - 2 m.z^x_i + M)(q_i - 2 w.z^y_i + N) = sum p q - 2 w.(sum p z^y) - 2 m.(sum q z^x)
    + 4 m^T G_xy w + N sum p + M sum q - 3 n M N (using sum z^x = n m, sum z^y = n w)."""
    spans = (sx, sy)
    means = [colsum[s] / n for s in spans]
    out = products.new_zeros(2, 2)
    for i in range(2):
        for j in range(i, 2):
            mi, mj = means[i], means[j]
            big_m, big_n = mi @ mi, mj @ mj
            d = (products[i, j] - 2 * (mj @ sums[i, spans[j]]) - 2 * (mi @ sums[j, spans[i]])
                 + 4 * (mi @ gram[spans[i], spans[j]] @ mj) + big_n * totals[i] + big_m * totals[j]
                 - 3 * n * big_m * big_n)
            out[i, j] = out[j, i] = d
    return out


def row_norm_sums(xs: Sequence[torch.Tensor], shift: torch.Tensor,
                  chunk_rows: int = _gram.DEFAULT_CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 sums over the rows of the shifted concatenation z = [x_1 .. x_k] - shift of the
    per-datapoint squared norms p_i^l = ||z_i^l||^2 of each layer l: (sum_i p_i p_i^T (k, k),
    sum_i p_i z_i^T (k, W), sum_i p_i (k,)). What debiased CKA needs beyond the Gram; O(n W k)
    float64 work (no (W, W) GEMM), chunk by chunk so memory stays chunk_rows x W."""
    widths = [x.shape[1] for x in xs]
    offsets = [sum(widths[:i]) for i in range(len(xs))]
    n, k, dev = xs[0].shape[0], len(xs), xs[0].device
    shift = shift.to(device=dev, dtype=torch.float64)
    products = torch.zeros(k, k, dtype=torch.float64, device=dev)
    sums = torch.zeros(k, sum(widths), dtype=torch.float64, device=dev)
    totals = torch.zeros(k, dtype=torch.float64, device=dev)
    chunk = max(1, min(int(chunk_rows), int(n)))

    def shifted(i: int, r0: int) -> torch.Tensor:  # one layer's rows of z, float64
        return xs[i][r0:r0 + chunk].to(torch.float64) - shift[offsets[i]:offsets[i] + widths[i]]

    # one layer's chunk in float64 at a time (twice: the norms first, then the sums), not the
    # whole float64 [x_1 .. x_k] chunk, which was most of a streamed update's peak memory
    # (bench/RESULTS.md, 2026-12-08)
    for r0 in range(0, n, chunk):
        p = torch.stack([shifted(i, r0).square().sum(1) for i in range(k)], 1)
        products += p.T @ p
        for i, (o, w) in enumerate(zip(offsets, widths)):
            sums[:, o:o + w] += p.T @ shifted(i, r0)
        totals += p.sum(0)
    return products, sums, totals


# ---- inputs ---------------------------------------------------------------------------------------

def as_tensor(a: Any, what: str) -> torch.Tensor:
    """A torch view of a tensor / numpy / cupy (DLPack) array, zero-copy where possible."""
    if isinstance(a, torch.Tensor):
        t = a
    elif hasattr(a, "__dlpack__") and type(a).__module__.split(".")[0] != "numpy":
        t = torch.from_dlpack(a)  # cupy, jax, ...: stays on its device
    else:
        import numpy as np

        arr = np.asarray(a)
        if not arr.flags.writeable:
            arr = arr.copy()
        t = torch.from_numpy(arr)
    t = t.detach()
    if t.is_complex():
        raise InputError(f"{what} is complex ({t.dtype}); CCA needs real activations")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def _prepare(x: Any, y: Any, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 2:
            hint = (" Conv activations (N, C, H, W): use transfusion.ops.conv_to_datapoints first."
                    if t.dim() == 4 else "")
            raise InputError(f"{name} must be 2-D (datapoints, neurons), got shape {tuple(t.shape)}.{hint}")
    if layout == "neurons_first":
        x, y = x.T, y.T
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"x and y must have the same number of datapoints (rows), got {x.shape[0]} and "
            f"{y.shape[0]}; feed both layers the same inputs (and pool conv layers to one grid). "
            f"For google/svcca's (neurons, datapoints) arrays pass layout='neurons_first'.")
    if x.shape[0] < 2:
        raise InputError(f"need at least 2 datapoints, got {x.shape[0]}")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise InputError(f"x and y need at least one neuron each, got widths {x.shape[1]}, {y.shape[1]}")
    if x.device != y.device:
        raise InputError(f"x is on {x.device} and y on {y.device}: move them to one device")
    return x, y


def rescale_layer(x: torch.Tensor, gemm_dtype: torch.dtype) -> torch.Tensor:
    """x times a power of two when its magnitude would under- or overflow the Gram's squares
    (exact; every similarity here is invariant to a per-layer scale). A copy only in that case."""
    scale = _precision.power_of_two_scale(x, gemm_dtype)
    return x if scale == 1.0 else x * scale


def check_finite(colsum: torch.Tensor, gram: torch.Tensor, spans: Sequence[tuple[str, slice]]) -> None:
    """NaN / Inf anywhere in the data shows in the column sums or the Gram diagonal (free check)."""
    diag = torch.diagonal(gram)
    bad = ~(torch.isfinite(colsum) & torch.isfinite(diag))
    if bool(bad.any()):
        for name, s in spans:
            cols = torch.nonzero(bad[s]).flatten().tolist()
            if cols:
                raise InputError(
                    f"{name} contains NaN or Inf (or values whose squares overflow float32) in "
                    f"neuron(s) {cols[:10]}{' ...' if len(cols) > 10 else ''}; clean the "
                    f"activations (e.g. torch.nan_to_num) or pass float64")
        raise InputError("the activations contain NaN or Inf")


def _input_dtype(xs: Sequence[torch.Tensor]) -> str:
    """The least precise input dtype (it decides how much variation counts as constant)."""
    worst = max(xs, key=lambda t: _precision.unit_roundoff(t.dtype)).dtype
    return str(worst).replace("torch.", "")


def pair_moments(x: torch.Tensor, y: torch.Tensor, chunk_rows: int = _gram.DEFAULT_CHUNK_ROWS,
                 precision: str = "auto", use_kernel: bool | None = None,
                 row_norms: bool = False) -> Moments:
    """One Gram pass over [x, y] -> centred float64 moments (GEMMs in float32 unless
    precision="float64" or an input is float64); ``row_norms``: also the centred row-norm products
    debiased CKA needs (``row_norm_sums``, float64)."""
    dt = _gram.compute_dtype([x, y], precision)
    xs = [rescale_layer(x, dt), rescale_layer(y, dt)]
    shift = _gram.first_chunk_shift(xs, chunk_rows, dt)
    gram, colsum, chunk_sq = _gram.gram_pass(xs, shift, chunk_rows, cross=True, dtype=dt,
                                             use_kernel=use_kernel)
    return _moments_of_pass((x, y), xs, shift, (gram, colsum, chunk_sq), dt, chunk_rows, row_norms)


def _moments_of_pass(pair: tuple[torch.Tensor, torch.Tensor], xs: list[torch.Tensor],
                     shift: torch.Tensor, sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     dt: torch.dtype, chunk_rows: int, row_norms: bool) -> Moments:
    """Moments of one pair from its Gram pass's (gram, colsum, chunk_sq); xs: the pair's rescaled
    layers, shift: their shift."""
    (x, y), (gram, colsum, chunk_sq) = pair, sums
    a, b = x.shape[1], y.shape[1]
    sx, sy = slice(0, a), slice(a, a + b)
    check_finite(colsum, gram, [("x", sx), ("y", sy)])
    dtype = str(dt).replace("torch.", "")
    var = None
    if dt == torch.float32:
        rows = _gram.chunk_lengths(x.shape[0], chunk_rows)
        var = (_precision.entry_variance(chunk_sq, rows)
               + _precision.entry_bias(gram, rows) ** 2)
    row_sums = row_norm_sums(xs, shift, chunk_rows) if row_norms else None
    if row_sums is not None:
        row_sums = tuple(t.to(gram.device) for t in row_sums)
    return moments_from_sums(x.shape[0], shift.to(gram.device), colsum, gram, sx, sy, dtype,
                             _input_dtype([x, y]), var, row_sums)


#: devices where the pairs of a batched call share one Gram pass (gram_pass_groups: on CUDA one
#: strided-batched GEMM per chunk step for all pairs instead of one launch per pair and block).
#: Not the CPU: there each pass already keeps both cores busy on its chunks, and the joint pass's
#: per-thread accumulators are (sum of widths)^2.
BATCHED_PASS_DEVICES = {"cuda"}
#: the joint pass's output is (sum of widths)^2 float64 (zeros between pairs): pairs are batched
#: while it stays within this
BATCHED_PASS_BYTES = 256 << 20


def _batched_passes(pairs: list[tuple[torch.Tensor, torch.Tensor]], dtypes: list[torch.dtype]
                    ) -> list[list[int]]:
    """Indices of the pairs that share one pass: same n, device and GEMM dtype, a device in
    BATCHED_PASS_DEVICES, the joint Gram within BATCHED_PASS_BYTES; every other pair alone."""
    out: list[list[int]] = []
    open_batches: dict[tuple, tuple[list[int], int]] = {}  # key -> (pairs, their summed width)
    for i, ((x, y), dt) in enumerate(zip(pairs, dtypes, strict=True)):
        if x.device.type not in BATCHED_PASS_DEVICES:
            out.append([i])
            continue
        key, w = (x.shape[0], x.device, dt), x.shape[1] + y.shape[1]
        batch, width = open_batches.get(key, (None, 0))
        if batch is None or (width + w) ** 2 * 8 > BATCHED_PASS_BYTES:
            batch, width = [], 0
            out.append(batch)
        batch.append(i)
        open_batches[key] = (batch, width + w)
    return out


def pairs_moments(pairs: list[tuple[torch.Tensor, torch.Tensor]], chunk_rows: int,
                  precisions: list[str], use_kernel: bool | None = None,
                  row_norms: bool = False) -> list[Moments]:
    """``pair_moments`` of every pair (``precisions[i]`` for pair i); pairs that
    ``_batched_passes`` groups share one sweep over the data (``gram_pass_groups``)."""
    dtypes = [_gram.compute_dtype(list(pair), p) for pair, p in zip(pairs, precisions, strict=True)]
    out: list[Moments | None] = [None] * len(pairs)
    for batch in _batched_passes(pairs, dtypes):
        if len(batch) == 1:
            i = batch[0]
            out[i] = pair_moments(*pairs[i], chunk_rows, precisions[i], use_kernel, row_norms)
            continue
        dt = dtypes[batch[0]]
        layers = [[rescale_layer(t, dt) for t in pairs[i]] for i in batch]
        shifts = [_gram.first_chunk_shift(xs, chunk_rows, dt) for xs in layers]
        gram, colsum, chunk_sq = _gram.gram_pass_groups(
            [t for xs in layers for t in xs], torch.cat(shifts), [2] * len(batch), chunk_rows,
            dtype=dt, use_kernel=use_kernel)
        col = 0
        for i, xs, shift in zip(batch, layers, shifts, strict=True):
            s = slice(col, col + xs[0].shape[1] + xs[1].shape[1])
            out[i] = _moments_of_pass(pairs[i], xs, shift, (gram[s, s], colsum[s], chunk_sq[:, s]),
                                      dt, chunk_rows, row_norms)
            col = s.stop
    return out  # type: ignore[return-value]


# ---- finalisation ---------------------------------------------------------------------------------

@dataclass
class _Side:
    """One layer's kept neurons and the eigendecomposition of their (standardised) covariance."""

    matrix: torch.Tensor  # the (standardised) covariance of the kept neurons
    idx: torch.Tensor  # kept neurons
    scale: torch.Tensor  # their standardisation (ones for SVCCA)
    dropped: tuple[int, ...]  # constant neurons left out
    width: int
    var: torch.Tensor | None  # the kept neurons' Gram entry variances, standardised (float32)
    lam: torch.Tensor | None = None
    vec: torch.Tensor | None = None


def _side(c: torch.Tensor, mean: torch.Tensor, n: int, standardise: bool, input_dtype: str,
          entry_var: torch.Tensor | None) -> _Side:
    """Leave out constant neurons: variance within rounding of the neuron's own magnitude in its
    input dtype (transfusion.ops.precision.constant_tolerance)."""
    var = torch.diagonal(c).clamp_min(0) / n
    tol = _precision.constant_tolerance(getattr(torch, input_dtype))
    valid = var > tol * (mean**2 + var)
    idx = torch.nonzero(valid).flatten()
    dropped = tuple(int(i) for i in torch.nonzero(~valid).flatten().tolist())
    if standardise:
        scale = torch.rsqrt(torch.diagonal(c)[idx])
    else:
        scale = torch.ones(idx.numel(), dtype=c.dtype, device=c.device)
    m = c[idx][:, idx] * torch.outer(scale, scale)
    kept_var = None
    if entry_var is not None:
        sq = scale * scale
        kept_var = entry_var[idx][:, idx] * torch.outer(sq, sq)
    return _Side(m, idx, scale, dropped, c.shape[0], kept_var)


#: CPU threads the small dense problems may use side by side, one torch thread each (set by
#: _small_linalg_threads to the thread count torch had)
_LINALG_WORKERS: contextvars.ContextVar[int] = contextvars.ContextVar("linalg_workers", default=1)


@contextlib.contextmanager
def _small_linalg_threads(device: torch.device):
    """One torch thread per small dense problem (eigh, SVD): measured on this 2-core machine, a
    512x512 float64 eigh takes ~0.05 s on one thread and 0.3-0.7 s on two when the cores are
    busy (OpenMP barriers). Independent problems then run side by side on the threads torch had
    (``_map_side_by_side``). The thread count is restored afterwards."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    token = _LINALG_WORKERS.set(before)
    try:
        yield
    finally:
        _LINALG_WORKERS.reset(token)
        torch.set_num_threads(before)


def _map_side_by_side(fn, items: list) -> list:
    """``[fn(item) for item in items]``, the items side by side on the CPU threads torch had
    (torch releases the GIL; each call runs on one torch thread, so results are the same as one
    after the other). Measured, 2-core AMD EPYC: two 512 x 512 float64 eigh 0.042 s side by side,
    0.083 s one after the other."""
    workers = min(len(items), _LINALG_WORKERS.get())
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="transfusion-linalg") as pool:
        return list(pool.map(fn, items))


def _eigh_descending(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if m.shape[0] == 0:
        return m.new_zeros(0), m.new_zeros(0, 0)
    lam, vec = torch.linalg.eigh(m)
    return lam.flip(0), vec.flip(1)


def _eigh_many(mats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eigendecompositions (descending) of symmetric matrices. On CUDA same-shape ones go in one
    batched call; on the CPU one call each, side by side (measured: batched eigh of 2 x 512 took
    2x the loop)."""
    if all(m.device.type == "cpu" for m in mats):
        return _map_side_by_side(_eigh_descending, mats)
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(mats)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((tuple(m.shape), m.device), []).append(i)
    for idx in groups.values():
        if mats[idx[0]].shape[0] == 0:
            for i in idx:
                out[i] = _eigh_descending(mats[i])
            continue
        lam, vec = torch.linalg.eigh(torch.stack([mats[i] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = (lam[j].flip(0), vec[j].flip(1))
    return out  # type: ignore[return-value]


def _kept_directions(side: _Side, keep: float | None, rtol: float) -> tuple[int, int]:
    """(k, rank): directions kept (rtol and, for SVCCA, the ``keep`` variance cut) and directions
    above rtol alone."""
    lam = side.lam
    if lam.numel() == 0 or lam[0] <= 0:
        return 0, 0
    rank = int((lam > rtol * lam[0]).sum())
    k = rank
    if keep is not None:
        pos = lam.clamp_min(0)
        frac = torch.cumsum(pos, 0) / pos.sum()
        k = min(k, int((frac < keep - 1e-12).sum()) + 1)
    return k, rank


def _whitener(side: _Side, cols: slice) -> torch.Tensor:
    """W (width, len(cols)): X_c W is an orthonormal basis of the directions ``cols``."""
    lam, vec = side.lam[cols], side.vec[:, cols]
    w = lam.new_zeros(side.width, lam.numel())
    w[side.idx] = vec * torch.rsqrt(lam) * side.scale[:, None]
    return w


def _solve(method: str, m: Moments, sx: _Side, sy: _Side, keep: float | None,
           rtol: float) -> SimilarityResult:
    kx, rank_x = _kept_directions(sx, keep, rtol)
    ky, rank_y = _kept_directions(sy, keep, rtol)
    wx, wy = _whitener(sx, slice(0, kx)), _whitener(sy, slice(0, ky))
    cond = max(float(s.lam[0] / s.lam[k - 1]) if k else 1.0 for s, k in ((sx, kx), (sy, ky)))
    r = min(kx, ky)
    weights, error = None, None
    if r == 0:
        log.warning("%s: a layer has no variance left (constant / dead); similarity set to 0", method)
        rho = wx.new_zeros(0)
        mean = 0.0
    else:
        u, rho, vh = torch.linalg.svd(wx.T @ m.cxy @ wy, full_matrices=False)
        rho = rho[:r].clamp(0.0, 1.0)
        mean = float(rho.mean())
        if method == "pwcca":
            alpha = (u[:, :r].T @ (wx.T @ m.cxx)).abs().sum(dim=1)
            weights = (alpha / alpha.sum()).cpu()
            mean = float((weights * rho.cpu()).sum())
        if m.dtype == "float32" and m.entry_var is not None and method != "pwcca":
            error = _rounding_error(m, sx, sy, (kx, rank_x), (ky, rank_y), wx, wy, u, rho, vh.T)
    return SimilarityResult(method, mean, rho.cpu(), (kx, ky), m.n, m.dtype,
                            keep=keep, rtol=rtol, condition=cond, weights=weights,
                            dropped=(sx.dropped, sy.dropped), error_estimate=error)


def _rounding_error(m: Moments, sx: _Side, sy: _Side, kr_x: tuple[int, int], kr_y: tuple[int, int],
                    wx: torch.Tensor, wy: torch.Tensor, u: torch.Tensor, rho: torch.Tensor,
                    v: torch.Tensor) -> float:
    """The rounding model's error of the mean (transfusion.ops.precision) for a float32 pass."""
    var_xx, var_yy, var_xy = m.variance_blocks()
    r = rho.numel()
    trunc = rho.new_zeros(())
    (kx, rank_x), (ky, rank_y) = kr_x, kr_y
    if rank_x > kx:
        t_drop = _whitener(sx, slice(kx, rank_x)).T @ m.cxy @ wy
        trunc = trunc + _precision.truncation_variance(sx.lam, sx.vec, sx.var, kx, rank_x, u, t_drop, v, r)
    if rank_y > ky:
        t_drop = _whitener(sy, slice(ky, rank_y)).T @ m.cxy.T @ wx
        trunc = trunc + _precision.truncation_variance(sy.lam, sy.vec, sy.var, ky, rank_y, v, t_drop, u, r)
    return _precision.cca_mean_error(var_xx, var_yy, var_xy, wx, wy, u, rho, v, trunc)


def _cka(m: Moments, debiased: bool = False) -> SimilarityResult:
    if debiased:
        return _debiased_cka(m)
    den = torch.linalg.matrix_norm(m.cxx) * torch.linalg.matrix_norm(m.cyy)
    val = float(torch.linalg.matrix_norm(m.cxy) ** 2 / den) if den > 0 else 0.0
    error = None
    if m.dtype == "float32" and m.entry_var is not None:
        error = _precision.cka_error(m.cxx, m.cyy, m.cxy, *m.variance_blocks())
    return SimilarityResult("cka", min(max(val, 0.0), 1.0), torch.zeros(0, dtype=torch.float64),
                            (m.cxx.shape[0], m.cyy.shape[0]), m.n, m.dtype, error_estimate=error)


def _debiased_cka(m: Moments) -> SimilarityResult:
    """CKA from the unbiased HSIC (module docstring); n(n-3) HSIC_1 is what is computed (the factor
    cancels). HSIC_1(K, K) is a squared norm (of K's U-centred form), so the value is in [-1, 1]."""
    n = m.n
    if n < 4:
        raise InputError(f"debiased CKA needs at least 4 datapoints (the unbiased HSIC divides by "
                         f"n - 3), got {n}")
    if m.row_norms is None:
        raise InputError("debiased CKA needs the per-datapoint row norms, which these moments lack")
    c1, c2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    tx, ty = torch.trace(m.cxx), torch.trace(m.cyy)
    d = m.row_norms
    hxy = (m.cxy**2).sum() - c1 * d[0, 1] + c2 * tx * ty
    hxx = (m.cxx**2).sum() - c1 * d[0, 0] + c2 * tx * tx
    hyy = (m.cyy**2).sum() - c1 * d[1, 1] + c2 * ty * ty
    val, error = 0.0, None
    if hxx > 0 and hyy > 0:
        val = float(hxy / torch.sqrt(hxx * hyy))
        if m.dtype == "float32" and m.entry_var is not None:
            error = _debiased_cka_error(m, c1, c2, tx, ty, hxy, hxx, hyy)
    elif m.dtype == "float32" and m.entry_var is not None:
        error = 0.0
    return SimilarityResult("cka", min(max(val, -1.0), 1.0), torch.zeros(0, dtype=torch.float64),
                            (m.cxx.shape[0], m.cyy.shape[0]), m.n, m.dtype, error_estimate=error,
                            debiased=True)


def _debiased_cka_error(m: Moments, c1: float, c2: float, tx: torch.Tensor, ty: torch.Tensor,
                        hxy: torch.Tensor, hxx: torch.Tensor, hyy: torch.Tensor) -> float:
    """SIGMAS standard deviations of the rounding model's error of debiased CKA: its explicit
    gradient in the centred Gram blocks (the row-norm sums are float64; the Gram enters the
    centred row-norm products only through 4 m^T G_xy w), as ``precision.cka_error`` does for
    the biased value."""
    var_xx, var_yy, var_xy = m.variance_blocks()
    mx, my = m.offset_x, m.offset_y
    s = torch.sqrt(hxx * hyy)
    f = hxy / s
    eye_x = torch.eye(m.cxx.shape[0], dtype=m.cxx.dtype, device=m.cxx.device)
    eye_y = torch.eye(m.cyy.shape[0], dtype=m.cyy.dtype, device=m.cyy.device)
    gxy = (2 * m.cxy - 4 * c1 * torch.outer(mx, my)) / s
    gxx = c2 * ty * eye_x / s - f / (2 * hxx) * (2 * m.cxx - 4 * c1 * torch.outer(mx, mx) + 2 * c2 * tx * eye_x)
    gyy = c2 * tx * eye_y / s - f / (2 * hyy) * (2 * m.cyy - 4 * c1 * torch.outer(my, my) + 2 * c2 * ty * eye_y)
    var = (_precision._variance(gxy, var_xy) + 2 * _precision._variance(gxx, var_xx)
           + 2 * _precision._variance(gyy, var_yy))
    return _precision.SIGMAS * float(torch.sqrt(var.clamp_min(0)))


def _procrustes(m: Moments) -> SimilarityResult:
    """||C_xy||_* / sqrt(tr C_xx tr C_yy) (module docstring)."""
    tx, ty = torch.trace(m.cxx).clamp_min(0), torch.trace(m.cyy).clamp_min(0)
    den = torch.sqrt(tx * ty)
    val, error = 0.0, None
    float32 = m.dtype == "float32" and m.entry_var is not None
    if den > 0:
        u, s, vh = torch.linalg.svd(m.cxy, full_matrices=False)
        val = float(s.sum() / den)
        if float32:
            error = _procrustes_error(m, u, s, vh, tx, ty, den, val)
    elif float32:
        error = 0.0
    return SimilarityResult("procrustes", min(max(val, 0.0), 1.0), torch.zeros(0, dtype=torch.float64),
                            (m.cxx.shape[0], m.cyy.shape[0]), m.n, m.dtype, error_estimate=error)


def _procrustes_error(m: Moments, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, tx: torch.Tensor,
                      ty: torch.Tensor, den: torch.Tensor, val: float) -> float:
    """The rounding model's error of the Procrustes similarity. First order, as for CCA's sum of
    singular values: d sigma_i = u_i^T E_xy v_i, d tr C = tr E. A singular value within the noise
    (below ``noise`` = SIGMAS sqrt(sum var_xy), a bound on ||E_xy||_F >= ||E_xy||_2) is not
    differentiable there, so instead of its gradient it gets Weyl's bound |d sigma_i| <= ||E_xy||_2,
    added in full."""
    var_xx, var_yy, var_xy = m.variance_blocks()
    noise = _precision.SIGMAS * torch.sqrt(var_xy.sum().clamp_min(0))
    big = s > noise
    gxy = (u[:, big] @ vh[big]) / den
    dx, dy = torch.diagonal(var_xx), torch.diagonal(var_yy)
    # the traces' gradients are -val / (2 tr) on the diagonals
    var = (_precision._variance(gxy, var_xy) + 2 * (val / (2 * tx))**2 * dx.sum()
           + 2 * (val / (2 * ty))**2 * dy.sum())
    small = int((~big).sum())
    return (_precision.SIGMAS * float(torch.sqrt(var.clamp_min(0)))
            + small * float(noise / den))


def _finalise_cca_family(method: str, moments: list[Moments], keep: float | None, rtol: float,
                         debiased: bool) -> list[SimilarityResult]:
    """CCA, SVCCA (SVD then CCA) and PWCCA: every side's eigendecomposition first, batched."""
    svd_keep = keep if method == "svcca" else None
    standardise = method != "svcca"
    pairs = []
    for m in moments:
        var_xx, var_yy = (m.variance_blocks()[:2] if m.entry_var is not None else (None, None))
        pairs.append((_side(m.cxx, m.mean_x, m.n, standardise, m.input_dtype, var_xx),
                      _side(m.cyy, m.mean_y, m.n, standardise, m.input_dtype, var_yy)))
    sides = [side for pair in pairs for side in pair]
    for side, (lam, vec) in zip(sides, _eigh_many([s.matrix for s in sides])):
        side.lam, side.vec = lam, vec
    return _map_side_by_side(lambda item: _solve(method, item[0], *item[1], svd_keep, rtol),
                             list(zip(moments, pairs)))


#: method -> finaliser(method, moments, keep, rtol, debiased): a new similarity measure is one
#: function computing it from the moments (Moments) plus one entry here
FINALISERS = {
    "svcca": _finalise_cca_family,
    "cca": _finalise_cca_family,
    "pwcca": _finalise_cca_family,
    "cka": lambda method, moments, keep, rtol, debiased: [_cka(m, debiased) for m in moments],
    "procrustes": lambda method, moments, keep, rtol, debiased: [_procrustes(m) for m in moments],
}
assert tuple(FINALISERS) == METHODS


def finalise_many(method: str, moments: list[Moments], keep: float | None = 0.99,
                  rtol: float = DEFAULT_RTOL, debiased: bool = False) -> list[SimilarityResult]:
    """Similarity results from moments (see FINALISERS); the eigendecompositions of equal-width
    sides are batched. ``debiased`` (cka only): the unbiased HSIC, from the moments' ``row_norms``."""
    if method not in FINALISERS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if debiased and method != "cka":
        raise InputError(f"debiased=True is for method='cka', got method={method!r}")
    results = FINALISERS[method](method, moments, keep, rtol, debiased)
    for m, r in zip(moments, results):
        # debiased CKA removes the bias towards 1 that few datapoints give (its point)
        r.few_datapoints = (not r.debiased
                            and m.n < MIN_DATAPOINTS_PER_NEURON * max(m.cxx.shape[0], m.cyy.shape[0]))
    return results


def warn_about(results: Sequence[SimilarityResult], where: str = "") -> None:
    """One warning per result that left neurons out or had too few datapoints per neuron."""
    for r in results:
        if any(r.dropped):
            sides = [f"{name}: {list(d[:10])}{' ...' if len(d) > 10 else ''} ({len(d)})"
                     for name, d in zip(("x", "y"), r.dropped) if d]
            warnings.warn(f"{r.method}{where}: left out constant (dead) neurons, "
                          f"{'; '.join(sides)}; their indices are in result.dropped",
                          RuntimeWarning, stacklevel=3)
        if r.few_datapoints:
            widest = max(r.kept) if r.method in _WHOLE_LAYER else None
            need = MIN_DATAPOINTS_PER_NEURON * (widest or max(r.n, 1))
            exact = " (exactly 1 when n <= neurons)" if r.method not in _WHOLE_LAYER else ""
            if r.method == "cka":
                exact = " (cka(..., debiased=True) is not)"
            warnings.warn(f"{r.method}{where}: {r.n} datapoints is fewer than "
                          f"{MIN_DATAPOINTS_PER_NEURON} per neuron, so the value is biased towards "
                          f"1{exact}; use at least {need if widest else 'ten times the wider layer'} "
                          f"datapoints (result.few_datapoints is set)",
                          RuntimeWarning, stacklevel=3)


# ---- public API -----------------------------------------------------------------------------------

def _gemm_precision(method: str, precision: str, x: torch.Tensor, y: torch.Tensor) -> str:
    """Resolve precision="auto" before the pass: float64 where it is cheap or the model does not
    cover the method; float32 (checked after the pass) otherwise."""
    if precision != "auto":
        return precision
    if method in _precision.FLOAT64_METHODS:
        return "float64"
    if _precision.float64_is_cheap(x.shape[0], x.shape[1] + y.shape[1]):
        return "float64"
    return "auto"


def add_resampled(result: SimilarityResult, res: "_resampling.Resampler", ia: int, ib: int, main: Moments,
                  keep: float | None, rtol: float, debiased: bool, ci: float | None,
                  chance: bool) -> None:
    """Fill ``result.ci`` (bootstrap percentile interval re-centred on the value, level ``ci``;
    transfusion.ops.resampling says why) and / or ``result.chance``
    (re-paired datapoints) from a Resampler that saw the pair's layers ia (x) and ib (y)."""
    method = result.method
    if ci is not None:
        reps = res.replicate_moments(ia, ib, main.input_dtype, debiased)
        with _small_linalg_threads(reps[0].cxx.device):
            values = torch.tensor([r.mean for r in finalise_many(method, reps, keep, rtol, debiased)],
                                  dtype=torch.float64)
        result.ci = _resampling.percentile_interval(values, ci, result.mean)
        result.ci_level, result.replicates, result.seed = float(ci), res.replicates, res.seed
    if chance:
        shuffled = res.chance_moments(main, ia, ib)
        with _small_linalg_threads(shuffled.cxx.device):
            result.chance = finalise_many(method, [shuffled], keep, rtol, debiased)[0].mean
        result.seed = res.seed


def _resample_pairs(method: str, pairs: list[tuple[torch.Tensor, torch.Tensor]], moments: list[Moments],
                    results: list[SimilarityResult], keep: float | None, rtol: float, debiased: bool,
                    chunk_rows: int, opts: dict[str, Any]) -> None:
    """ci / chance for in-memory pairs: the same Resampler the streamed statistics use, fed the
    pair in chunks, so both give the same replicates and pairing for the same seed."""
    ci, chance = opts.get("ci"), bool(opts.get("chance"))
    if ci is None and not chance:
        return
    replicates = opts.get("replicates", _resampling.DEFAULT_REPLICATES) if ci is not None else None
    chunk = max(1, int(chunk_rows))
    for (x, y), m, r in zip(pairs, moments, results):
        res = _resampling.Resampler([x.shape[1], y.shape[1]], replicates, chance, opts.get("seed", 0),
                                    x.device)
        for r0 in range(0, x.shape[0], chunk):
            res.update([x[r0:r0 + chunk], y[r0:r0 + chunk]])
        add_resampled(r, res, 0, 1, m, keep, rtol, debiased, ci, chance)


def _run(method: str, x: Any, y: Any, keep: float | None, rtol: float, layout: str,
         chunk_rows: int, precision: str, debiased: bool = False,
         **opts: Any) -> SimilarityResult | list[SimilarityResult]:
    _resampling.check_options(opts.get("ci"), opts.get("replicates"), opts.get("seed", 0))
    if keep is not None and not 0.0 < keep <= 1.0:
        raise InputError(f"keep must be in (0, 1] (fraction of variance kept), got {keep}")
    if not rtol >= 0 or math.isinf(rtol):
        raise InputError(f"rtol must be a finite number >= 0, got {rtol}")
    batched = isinstance(x, (list, tuple))
    if batched != isinstance(y, (list, tuple)) or (batched and len(x) != len(y)):
        raise InputError("for a batched call pass two lists of equal length (x_i paired with y_i)")
    if precision not in _gram.PRECISIONS:
        raise InputError(f"precision must be one of {_gram.PRECISIONS}, got {precision!r}")
    pairs = [_prepare(xi, yi, layout) for xi, yi in (zip(x, y) if batched else [(x, y)])]
    chosen = [_gemm_precision(method, precision, xt, yt) for xt, yt in pairs]
    if debiased:
        few = [xt.shape[0] for xt, _ in pairs if xt.shape[0] < 4]
        if few:
            raise InputError(f"debiased CKA needs at least 4 datapoints (the unbiased HSIC divides "
                             f"by n - 3), got {few[0]}")
    moments = pairs_moments(pairs, chunk_rows, chosen, row_norms=debiased)
    with _small_linalg_threads(moments[0].cxx.device):
        results = finalise_many(method, moments, keep, rtol, debiased)
    # precision="auto" with a float32 pass: redo in float64 where the rounding model does not put
    # the mean within AUTO_TARGET of the float64 result.
    redo = [i for i, (p, r) in enumerate(zip(chosen, results))
            if p == "auto" and r.dtype == "float32"
            and (r.error_estimate is None or not r.error_estimate <= AUTO_TARGET)]
    if redo:
        exact_moments = pairs_moments([pairs[i] for i in redo], chunk_rows, ["float64"] * len(redo),
                                      row_norms=debiased)
        with _small_linalg_threads(exact_moments[0].cxx.device):
            exact = finalise_many(method, exact_moments, keep, rtol, debiased)
        for i, r in zip(redo, exact):
            results[i] = r
    _resample_pairs(method, pairs, moments, results, keep, rtol, debiased, chunk_rows, opts)
    warn_about(results)
    return results if batched else results[0]


_NO_RESAMPLING = dict(ci=None, replicates=_resampling.DEFAULT_REPLICATES, seed=0, chance=False)


@torch.compiler.disable
def svcca(x: Any, y: Any, keep: float = 0.99, *, rtol: float = DEFAULT_RTOL,
          layout: str = "datapoints_first", chunk_rows: int = _gram.DEFAULT_CHUNK_ROWS,
          precision: str = "auto", ci: float | None = None,
          replicates: int = _resampling.DEFAULT_REPLICATES, seed: int = 0, chance: bool = False):
    """SVCCA of x (n, a) and y (n, b): keep the top singular directions of each centred layer
    that explain ``keep`` of its variance, then CCA; ``.mean`` is the mean canonical correlation.

    x, y: torch tensors (any device, any float dtype), numpy or cupy arrays; or two lists of them
    (batched: returns a list). ``layout="neurons_first"`` takes (neurons, datapoints) arrays as
    google/svcca does. ``rtol``: directions with variance below rtol x the largest are dropped.
    ``precision``: "auto" (float64 GEMMs where cheap; otherwise float32, redone in float64 when the
    rounding model of transfusion.ops.precision does not put the mean within 1e-6 of float64),
    "float32" (always fast) or "float64" (float64 GEMMs; always for float64 inputs).

    ``ci=0.95``: also ``.ci`` = (low, high), the percentile interval of ``.mean`` over
    ``replicates`` Poisson-bootstrap replicates of the datapoints (seeded by ``seed``), re-centred
    on ``.mean`` (resampling repeats datapoints, which shifts CCA-family replicates up); costs
    replicates x (a + b + 2)^2 x 8 bytes and replicates x one float64 Gram pass
    (transfusion.ops.resampling). ``chance=True``: also ``.chance``, the value with x's datapoints
    paired with y's in a seeded random order: what unrelated layers of these widths and this n
    show (one more float64 Gram pass). Both off by default (then nothing changes).
    """
    return _run("svcca", x, y, keep, rtol, layout, chunk_rows, precision,
                ci=ci, replicates=replicates, seed=seed, chance=chance)


@torch.compiler.disable
def cca(x: Any, y: Any, *, rtol: float = DEFAULT_RTOL, layout: str = "datapoints_first",
        chunk_rows: int = _gram.DEFAULT_CHUNK_ROWS, precision: str = "auto", ci: float | None = None,
        replicates: int = _resampling.DEFAULT_REPLICATES, seed: int = 0, chance: bool = False):
    """Plain CCA (no SVD truncation) of x (n, a) and y (n, b); see ``svcca`` for the arguments."""
    return _run("cca", x, y, None, rtol, layout, chunk_rows, precision,
                ci=ci, replicates=replicates, seed=seed, chance=chance)


@torch.compiler.disable
def pwcca(x: Any, y: Any, *, rtol: float = DEFAULT_RTOL, layout: str = "datapoints_first",
          chunk_rows: int = _gram.DEFAULT_CHUNK_ROWS, precision: str = "auto", ci: float | None = None,
          replicates: int = _resampling.DEFAULT_REPLICATES, seed: int = 0, chance: bool = False):
    """Projection-weighted CCA (Morcos et al. 2018), weights from x; see ``svcca``.
    ``precision="auto"`` means float64 GEMMs here: the projection weights amplify float32 Gram
    rounding (measured 3.9e-6 on the mean at condition 17); pass "float32" for speed."""
    return _run("pwcca", x, y, None, rtol, layout, chunk_rows, precision,
                ci=ci, replicates=replicates, seed=seed, chance=chance)


@torch.compiler.disable
def cka(x: Any, y: Any, *, debiased: bool = False, layout: str = "datapoints_first",
        chunk_rows: int = _gram.DEFAULT_CHUNK_ROWS, precision: str = "auto", ci: float | None = None,
        replicates: int = _resampling.DEFAULT_REPLICATES, seed: int = 0, chance: bool = False,
        kernel: str = "linear", sigma: float = RBF_SIGMA):
    """Linear CKA (Kornblith et al. 2019) of x (n, a) and y (n, b); see ``svcca``.

    ``debiased=True``: from the unbiased HSIC estimator (Song et al. 2012), as Kornblith's
    ``feature_space_linear_cka(..., debiased=True)``: near 0 for independent layers even with few
    datapoints (the biased value drifts towards 1 there); in [-1, 1]; needs n >= 4. Same single
    pass, plus O(n (a + b)) float64 work for the per-datapoint row norms.

    ``kernel="rbf"``: RBF-kernel CKA (Kornblith's ``cka(gram_rbf(x, sigma), gram_rbf(y, sigma))``):
    k(x_i, x_j) = exp(-||x_i - x_j||^2 / (2 sigma^2 median_ij ||x_i - x_j||^2)), i.e. the bandwidth
    is ``sigma`` times the median distance between datapoints (median over all n^2 pairs, the
    diagonal included, as their colab); biased HSIC, or the unbiased one with ``debiased=True``.
    In memory only, float64, O(n^2 (a + b)) time and about 3 n^2 x 8 bytes (2.4 GB at the limit
    of RBF_MAX_DATAPOINTS = 10,000 datapoints); no ci / chance."""
    if kernel != "linear":
        return _rbf_run(x, y, kernel, sigma, debiased, layout, ci, chance)
    return _run("cka", x, y, None, DEFAULT_RTOL, layout, chunk_rows, precision, debiased=debiased,
                ci=ci, replicates=replicates, seed=seed, chance=chance)


@torch.compiler.disable
def procrustes(x: Any, y: Any, *, layout: str = "datapoints_first",
               chunk_rows: int = _gram.DEFAULT_CHUNK_ROWS, precision: str = "auto",
               ci: float | None = None, replicates: int = _resampling.DEFAULT_REPLICATES,
               seed: int = 0, chance: bool = False):
    """Orthogonal Procrustes similarity of x (n, a) and y (n, b): ||X_c^T Y_c||_* /
    (||X_c||_F ||Y_c||_F) with X_c, Y_c the centred layers, i.e. max over orthogonal R of
    <X_c R, Y_c> after scaling both to unit Frobenius norm; in [0, 1], invariant to orthogonal
    transforms, isotropic scaling and offsets of either layer. Ding et al. (2021)'s Procrustes
    distance is 2 - 2 x this. See ``svcca`` for the arguments."""
    return _run("procrustes", x, y, None, DEFAULT_RTOL, layout, chunk_rows, precision,
                ci=ci, replicates=replicates, seed=seed, chance=chance)


# ---- RBF CKA (in memory only) ---------------------------------------------------------------------

def _rbf_run(x: Any, y: Any, kernel: str, sigma: float, debiased: bool, layout: str,
             ci: float | None, chance: bool) -> SimilarityResult | list[SimilarityResult]:
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if ci is not None or chance:
        raise InputError("ci / chance are for the linear statistics; kernel='rbf' has neither "
                         "(drop ci= / chance=, or use kernel='linear')")
    if not (isinstance(sigma, (int, float)) and 0 < sigma < math.inf):
        raise InputError(f"sigma must be a positive number (a fraction of the median distance), "
                         f"got {sigma!r}")
    batched = isinstance(x, (list, tuple))
    if batched != isinstance(y, (list, tuple)) or (batched and len(x) != len(y)):
        raise InputError("for a batched call pass two lists of equal length (x_i paired with y_i)")
    results = []
    for xi, yi in (zip(x, y) if batched else [(x, y)]):
        xt, yt = _prepare(xi, yi, layout)
        n = xt.shape[0]
        if n > RBF_MAX_DATAPOINTS:
            raise InputError(f"kernel='rbf' needs n x n kernels (about 3 x n^2 x 8 bytes): n = {n} "
                             f"is above the limit of {RBF_MAX_DATAPOINTS}; subsample the datapoints "
                             f"or use the linear kernel (streamed, any n)")
        if debiased and n < 4:
            raise InputError(f"debiased CKA needs at least 4 datapoints (the unbiased HSIC divides "
                             f"by n - 3), got {n}")
        for name, t in (("x", xt), ("y", yt)):
            if not bool(torch.isfinite(t).all()):
                raise InputError(f"{name} contains NaN or Inf; clean the activations (e.g. torch.nan_to_num)")
        val = rbf_cka_value(rbf_kernel(xt, sigma, "x"), rbf_kernel(yt, sigma, "y"), debiased)
        results.append(SimilarityResult("cka", val, torch.zeros(0, dtype=torch.float64),
                                        (xt.shape[1], yt.shape[1]), n, "float64", debiased=debiased,
                                        kernel="rbf", sigma=float(sigma)))
    return results if batched else results[0]


def _median(t: torch.Tensor) -> torch.Tensor:
    """numpy's median of all entries (the mean of the two middle ones for an even count)."""
    flat = t.reshape(-1)
    lo, hi = (flat.numel() - 1) // 2, flat.numel() // 2
    a = torch.kthvalue(flat, lo + 1).values
    return a if hi == lo else (a + torch.kthvalue(flat, hi + 1).values) / 2


def rbf_kernel(x: torch.Tensor, sigma: float, name: str = "x") -> torch.Tensor:
    """exp(-d_ij^2 / (2 sigma^2 median(d^2))) in float64 (d: Euclidean distances between rows);
    the rows are centred first (distances do not change; the GEMM form loses less to rounding)."""
    x = x.to(torch.float64)
    x = x - x.mean(0)
    sq = x.square().sum(1)
    d = torch.addmm(sq[:, None] + sq[None], x, x.T, alpha=-2.0).clamp_min_(0)
    d.fill_diagonal_(0)
    med = _median(d)
    if not med > 0:
        raise InputError(f"{name}: at least half of the pairwise distances are 0 (repeated or constant "
                         f"datapoints), so the median-distance bandwidth is 0; rbf CKA is undefined")
    return d.div_(-2.0 * sigma**2 * med).exp_()


def rbf_cka_value(k: torch.Tensor, lk: torch.Tensor, debiased: bool) -> float:
    """CKA of two n x n kernels: biased HSIC tr(HKH HLH) (Kornblith's ``cka``) or the unbiased
    HSIC (Song et al. 2012, ``reference_cca.cka_debiased``), in place on k and lk."""
    n = k.shape[0]
    if debiased:
        k.fill_diagonal_(0)
        lk.fill_diagonal_(0)

        def hsic(a, b, ra, rb):  # ra, rb: row sums
            return (torch.dot(a.reshape(-1), b.reshape(-1)) + ra.sum() * rb.sum() / ((n - 1) * (n - 2))
                    - 2.0 / (n - 2) * torch.dot(ra, rb))
        rk, rl = k.sum(1), lk.sum(1)
        hxy, hxx, hyy = hsic(k, lk, rk, rl), hsic(k, k, rk, rk), hsic(lk, lk, rl, rl)
        lo = -1.0
    else:
        for m in (k, lk):  # H m H in place: subtract row and column means, add the grand mean
            r = m.mean(1)
            m.sub_(r[:, None]).sub_(r[None]).add_(r.mean())
        hxy, hxx, hyy = (torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in ((k, lk), (k, k), (lk, lk)))
        lo = 0.0
    if not (hxx > 0 and hyy > 0):
        return 0.0
    return min(max(float(hxy / torch.sqrt(hxx * hyy)), lo), 1.0)
