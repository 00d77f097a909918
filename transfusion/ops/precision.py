"""When float32 GEMMs are accurate enough: the rounding model behind ``precision="auto"``.

The similarity ops form one Gram matrix of the shifted activations z = [x y] - shift; everything
after it is float64. With float32 GEMMs each chunk of K rows is summed in float32 (in whatever
order the BLAS of the machine chooses) and the chunks are added in float64. The machine's
summation order must not decide whether a result is right, so the choice rests on a model that
holds for any order, not on what one BLAS happened to measure:

* **Per Gram entry, whatever the order.** Within a chunk b of K_b rows the BLAS may sum the K_b
  products z_ri z_rj in any order (sequential, blocked, pairwise, split over threads or FMA
  lanes); every partial sum it forms is a sum over a subset of the rows, so by Cauchy-Schwarz its
  magnitude is at most ||z_i^b|| ||z_j^b|| (the chunk's column norms, ``chunk_sq`` of the Gram
  pass). Each of the at most K_b - 1 additions rounds with a relative error of at most u = 2^-24,
  and rounding the product and the shifted inputs adds at most 2 more such terms. Modelling the
  rounding errors as independent and zero-mean (probabilistic rounding-error analysis: Higham &
  Mary 2019) gives Var(E_ij) <= u^2 sum_b (K_b + 2) ||z_i^b||^2 ||z_j^b||^2 (``entry_variance``),
  for any summation tree. It is relative to the SHIFTED columns, so an offset the shift missed
  counts, and so do the length n (through the chunks) and the data's scale. For homogeneous data
  it is about u K / sqrt(n) ||z_i|| ||z_j||.
* **The systematic part.** Independence fails when a long run of same-sign terms is added
  sequentially (sums of squares; ReLU zeros and quantised values repeat one product): the
  roundings then lean one way. Measured in an emulated sequential order (the order of a GPU
  thread's dot product) on the Gram diagonal: 5x the zero-mean model, a mean error of 0.16 u per
  addition. So the diagonal (sums of squares, all one sign) is summed in float64 by the Gram pass
  (exact squares; cheap: n W operations), and off the diagonal the systematic part is bounded by
  ``entry_bias`` = ROUNDING_BIAS u K |G_ij| (0.5: 3x the diagonal's measured 0.16), added per
  pass (coherently) and taken as a standard deviation. It grows with the chunk length K and not
  with n, so gram.py uses short chunks (1024 rows: measured as fast as longer ones).
* **To the result.** The first-order change of the mean canonical correlation under a Gram
  perturbation E is linear in E (the canonical directions of the unperturbed problem give the
  coefficients: Delta rho_i = p_i^T E_xy q_i - rho_i/2 (p_i^T E_xx p_i + q_i^T E_yy q_i) with p_i, q_i the
  canonical weight vectors); its standard deviation under the model is computed exactly. SVCCA's
  truncation adds the rotation of each kept direction into each dropped one (eigen-gap
  perturbation), weighted by how much that rotation moves the correlations. Linear CKA has an
  explicit gradient. Entries are treated as independent (the symmetric blocks' mirrored entries
  count twice).
* **The decision.** float32 is kept when ``SIGMAS`` standard deviations of the modelled error stay
  within ``AUTO_TARGET`` (1e-6); otherwise the Gram is recomputed with float64 GEMMs. Problems so
  small that float64 GEMMs cost little (n * width^2 below ``FLOAT64_FREE_MACS``) take float64
  directly. PWCCA's projection weights are not covered by the linear model, so it takes float64.

Scale: a layer is multiplied by a power of two (exact, and every similarity here is invariant to a
per-layer scale) when its magnitude would make float32 squares underflow or overflow.
"""
from __future__ import annotations

import math

import torch

AUTO_TARGET = 1e-6
SIGMAS = 4.0
# float64 GEMMs directly when n * (a + b)^2 is below this (about 0.1 s of float64 GEMM on a
# 2-core VM); the float32 path and its check only pay off above it.
FLOAT64_FREE_MACS = 2**28
# Methods whose result the linear model does not cover: float64 GEMMs under "auto".
FLOAT64_METHODS = ("pwcca",)

# Mean rounding error per addition, as a fraction of u, when the BLAS adds terms of one sign in a
# long sequential run (a GPU thread's dot product, reference BLAS): measured up to 0.16 on the
# Gram diagonal (sums of squares) with n = 20k, 40 + 24 offset / ReLU / 1/8-quantised neurons,
# 4096-row chunks (tests/ops/test_float32_bound.py emulates that order); modelled with 3x margin.
ROUNDING_BIAS = 0.5

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11,
                 torch.bfloat16: 2.0**-8}
# A neuron is constant (dead) when its standard deviation is below this many units of rounding of
# its own magnitude in its input dtype: variation that small is what rounding the data could make.
CONSTANT_ULPS = 8.0
# Safe magnitude (largest |value| of a layer) for float32 squares summed over a chunk, and for
# float64; outside it the layer is rescaled by a power of two.
SAFE_MAGNITUDE = {torch.float32: (2.0**-40, 2.0**40), torch.float64: (2.0**-300, 2.0**300)}


def unit_roundoff(dtype: torch.dtype) -> float:
    return UNIT_ROUNDOFF.get(dtype, 2.0**-24)


def constant_tolerance(dtype: torch.dtype) -> float:
    """A neuron with variance <= this * (mean^2 + variance) is constant in its input dtype."""
    return (CONSTANT_ULPS * unit_roundoff(dtype)) ** 2


def float64_is_cheap(n: int, width: int) -> bool:
    return n * width * width <= FLOAT64_FREE_MACS


def entry_variance(chunk_sq: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(W, W) float64 variance bound of each float32 Gram entry's zero-mean rounding error:
    u^2 sum_b (K_b + 2) q_bi q_bj, with q = chunk_sq (chunks, W) the per-chunk squared column norms
    of the shifted data and rows (chunks,) the chunk lengths K_b."""
    u = unit_roundoff(torch.float32)
    q = chunk_sq.to(torch.float64).clamp_min(0)
    weight = (rows.to(device=q.device, dtype=torch.float64) + 2.0) * u * u
    return (q * weight[:, None]).T @ q


def entry_bias(gram: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(W, W) bound of each float32 Gram entry's systematic rounding error (one Gram pass):
    ROUNDING_BIAS * u * K_max * |gram| off the diagonal (see the module docstring)."""
    k = float(rows.max()) if rows.numel() else 0.0
    bias = ROUNDING_BIAS * unit_roundoff(torch.float32) * k * gram.to(torch.float64).abs()
    return bias.fill_diagonal_(0.0)  # the diagonal is summed in float64 (gram.py)


def power_of_two_scale(x: torch.Tensor, gemm_dtype: torch.dtype) -> float:
    """A power of two that brings the layer's largest magnitude into the safe range (1.0 if it is
    already there, or if the layer is all zeros / not finite: the finiteness check reports that)."""
    lo, hi = SAFE_MAGNITUDE.get(gemm_dtype, SAFE_MAGNITUDE[torch.float32])
    top = 0.0
    if x.numel():
        # aminmax: one read of x, no |x| copy (the copy cost 0.14 s per 512 x 100k layer)
        low, high = torch.aminmax(x)
        top = max(-float(low), float(high))
    if top == 0.0 or not math.isfinite(top) or lo <= top <= hi:
        return 1.0
    return 2.0 ** (-math.frexp(top)[1])


def _variance(coef: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Variance of sum_jl coef_jl E_jl for independent E_jl with variances ``var``."""
    return (coef * coef * var).sum()


def cca_mean_error(var_xx: torch.Tensor, var_yy: torch.Tensor, var_xy: torch.Tensor,
                   wx: torch.Tensor, wy: torch.Tensor, u: torch.Tensor, rho: torch.Tensor,
                   v: torch.Tensor, truncation: torch.Tensor | float = 0.0) -> float:
    """SIGMAS standard deviations of the modelled error of the mean canonical correlation.

    var_xx, var_yy, var_xy: the Gram blocks' entry variances (``entry_variance``) in the layers'
    own coordinates; wx (a, kx), wy (b, ky): whiteners of the kept directions (zero rows for
    left-out neurons); u, v: the top-r singular vectors of wx^T C_xy wy with singular values rho.
    ``truncation``: the variance from SVCCA's dropped directions (``truncation_variance``).
    """
    r = rho.numel()
    if r == 0:
        return 0.0
    p = wx @ u[:, :r]  # (a, r) canonical weights of x
    q = wy @ v[:, :r]
    # Delta mean = <gxy, E_xy> + <gxx, E_xx> + <gyy, E_yy>; E_xy's entries are independent, the
    # symmetric blocks' off-diagonal entries appear twice (variance at most 2x).
    gxy = (p @ q.T) / r
    gxx = (p * rho) @ p.T / (2 * r)
    gyy = (q * rho) @ q.T / (2 * r)
    var = _variance(gxy, var_xy) + 2 * _variance(gxx, var_xx) + 2 * _variance(gyy, var_yy)
    var = var + truncation
    return SIGMAS * float(torch.sqrt(var.clamp_min(0)))


def truncation_variance(lam: torch.Tensor, vec: torch.Tensor, var: torch.Tensor, k: int, rank: int,
                        basis: torch.Tensor, t_drop: torch.Tensor, other: torch.Tensor,
                        r: int) -> torch.Tensor:
    """Variance of the mean correlation from kept direction m (< k) rotating into dropped
    direction m' (k <= m' < rank) of one SVCCA side.

    lam, vec: the side's eigenvalues (descending) and eigenvectors (over its kept neurons, whose
    Gram entry variances are ``var``, in the side's (standardised) coordinates); basis (k, r):
    this side's singular vectors (u or v); t_drop (rank - k, ky): correlations of each dropped
    whitened direction with the other side's kept whitened directions; other (ky, r): the other
    side's singular vectors. The perturbation's component vec_m^T E vec_m' has variance
    A_mm' = sum_ij vec_im^2 var_ij vec_jm'^2; the rotation angle's standard deviation is
    sqrt(A_mm') / (lam_m - lam_m'), times sqrt(lam_m' / lam_m) in whitened coordinates; it moves
    the mean by angle * c_mm' with c = basis (t_drop other)^T / r.
    """
    if rank <= k or r == 0:
        return lam.new_zeros(())
    sq = vec[:, :rank] ** 2
    a = sq[:, :k].T @ var @ sq[:, k:rank]  # (k, rank - k)
    lk, ld = lam[:k], lam[k:rank]
    gap = (lk[:, None] - ld[None, :]).clamp_min(0)
    angle_sd = torch.sqrt(a.clamp_min(0) * ld[None, :].clamp_min(0) / lk[:, None])
    angle_sd = torch.where(gap > 0, angle_sd / gap, torch.full_like(gap, math.inf))
    c = basis[:, :r] @ (t_drop @ other[:, :r]).T / r  # (k, rank - k)
    return ((angle_sd * c) ** 2).sum()


def cka_error(cxx: torch.Tensor, cyy: torch.Tensor, cxy: torch.Tensor, var_xx: torch.Tensor,
              var_yy: torch.Tensor, var_xy: torch.Tensor) -> float:
    """SIGMAS standard deviations of the modelled error of linear CKA (explicit gradient)."""
    nx, ny = torch.linalg.matrix_norm(cxx), torch.linalg.matrix_norm(cyy)
    if nx == 0 or ny == 0:
        return 0.0
    value = torch.linalg.matrix_norm(cxy) ** 2 / (nx * ny)
    gxy = 2 * cxy / (nx * ny)
    gxx = -value * cxx / nx**2
    gyy = -value * cyy / ny**2
    var = _variance(gxy, var_xy) + 2 * _variance(gxx, var_xx) + 2 * _variance(gyy, var_yy)
    return SIGMAS * float(torch.sqrt(var.clamp_min(0)))
