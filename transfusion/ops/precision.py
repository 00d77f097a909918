"""When float32 GEMMs are accurate enough: the rounding model behind ``precision="auto"``.

The similarity ops form one Gram matrix of the shifted activations z = [x y] - shift; everything
after it is float64. With float32 GEMMs each chunk of K rows is summed in float32 (in whatever
order the BLAS of the machine chooses) and the chunks are added in float64. The machine's
summation order must not decide whether a result is right, so the choice rests on a model that
holds for any order, not on what one BLAS happened to measure:

* **Per Gram entry.** A sum of K products in float32, in any order, has an error whose standard
  deviation is at most about u * sqrt(K) * ||z_i|| ||z_j|| (probabilistic rounding-error analysis:
  Higham & Mary 2019; u = 2^-24; sequential summation is the worst common order, blocked and
  pairwise orders do better), plus u for rounding z itself. Measured on this project's layers it
  is 3 to 20 times smaller than the model on Intel (Xeon, AVX512) and AMD (EPYC) machines alike.
  ``||z_i||`` is the norm of the SHIFTED column, so an offset that the shift missed (a first chunk
  unlike the rest) counts, and so does the length n (through the chunks), and the scale (the
  model is relative to the data's own size).
* **To the result.** The first-order change of the mean canonical correlation under a Gram
  perturbation E is linear in E (the canonical directions of the unperturbed problem give the
  coefficients: Delta rho_i = p_i^T E_xy q_i - rho_i/2 (p_i^T E_xx p_i + q_i^T E_yy q_i) with p_i, q_i the
  canonical weight vectors); its standard deviation under the model is computed exactly. SVCCA's
  truncation adds the rotation of each kept direction into each dropped one (eigen-gap
  perturbation), weighted by how much that rotation moves the correlations. Linear CKA has an
  explicit gradient.
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


def per_entry_error(n: int, chunk_rows: int) -> float:
    """Modelled standard deviation of a float32 Gram entry's error, relative to ||z_i|| ||z_j||."""
    k = max(1, min(int(chunk_rows), int(n)))
    return unit_roundoff(torch.float32) * (math.sqrt(k) + 2.0)


def power_of_two_scale(x: torch.Tensor, gemm_dtype: torch.dtype) -> float:
    """A power of two that brings the layer's largest magnitude into the safe range (1.0 if it is
    already there, or if the layer is all zeros / not finite: the finiteness check reports that)."""
    lo, hi = SAFE_MAGNITUDE.get(gemm_dtype, SAFE_MAGNITUDE[torch.float32])
    top = float(x.abs().max()) if x.numel() else 0.0
    if top == 0.0 or not math.isfinite(top) or lo <= top <= hi:
        return 1.0
    return 2.0 ** (-math.frexp(top)[1])


def _sd(coef: torch.Tensor, d_rows: torch.Tensor, d_cols: torch.Tensor) -> torch.Tensor:
    """sqrt(sum_jl (coef_jl d_j d_l)^2): the standard deviation of sum_jl coef_jl E_jl per unit s."""
    return torch.linalg.matrix_norm(coef * torch.outer(d_rows, d_cols))


def cca_mean_error(s: float, dx: torch.Tensor, dy: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor,
                   u: torch.Tensor, rho: torch.Tensor, v: torch.Tensor,
                   truncation: torch.Tensor | float = 0.0) -> float:
    """SIGMAS standard deviations of the modelled error of the mean canonical correlation.

    dx, dy: shifted column norms; wx (a, kx), wy (b, ky): whiteners of the kept directions; u, v:
    the top-r singular vectors of wx^T C_xy wy with singular values rho. ``truncation``: the
    variance (per unit s^2) from SVCCA's dropped directions (``truncation_variance``, both sides).
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
    var = _sd(gxy, dx, dy) ** 2 + 2 * _sd(gxx, dx, dx) ** 2 + 2 * _sd(gyy, dy, dy) ** 2
    var = var + truncation
    return SIGMAS * s * float(torch.sqrt(var))


def truncation_variance(lam: torch.Tensor, vec: torch.Tensor, d: torch.Tensor, k: int, rank: int,
                        basis: torch.Tensor, t_drop: torch.Tensor, other: torch.Tensor,
                        r: int) -> torch.Tensor:
    """Variance (per unit s^2) of the mean correlation from kept direction m (< k) rotating into
    dropped direction m' (k <= m' < rank) of one SVCCA side.

    lam, vec: the side's eigenvalues (descending) and eigenvectors (over its kept neurons, whose
    shifted norms are d); basis (k, r): this side's singular vectors (u or v); t_drop (rank - k,
    ky): correlations of each dropped whitened direction with the other side's kept whitened
    directions; other (ky, r): the other side's singular vectors. The rotation angle's standard
    deviation is sqrt(a_m a_m') / (lam_m - lam_m') with a_m = sum_i vec_im^2 d_i^2, times
    sqrt(lam_m' / lam_m) in whitened coordinates; it moves the mean by angle * c_mm' with
    c = basis (t_drop other)^T / r.
    """
    if rank <= k or r == 0:
        return lam.new_zeros(())
    a = (vec[:, :rank] ** 2 * (d**2)[:, None]).sum(dim=0)  # (rank,)
    lk, ld = lam[:k], lam[k:rank]
    gap = (lk[:, None] - ld[None, :]).clamp_min(0)
    angle_sd = torch.sqrt(torch.outer(a[:k], a[k:rank]) * ld[None, :].clamp_min(0) / lk[:, None])
    angle_sd = torch.where(gap > 0, angle_sd / gap, torch.full_like(gap, math.inf))
    c = basis[:, :r] @ (t_drop @ other[:, :r]).T / r  # (k, rank - k)
    return ((angle_sd * c) ** 2).sum()


def cka_error(s: float, cxx: torch.Tensor, cyy: torch.Tensor, cxy: torch.Tensor,
              dx: torch.Tensor, dy: torch.Tensor) -> float:
    """SIGMAS standard deviations of the modelled error of linear CKA (explicit gradient)."""
    nx, ny = torch.linalg.matrix_norm(cxx), torch.linalg.matrix_norm(cyy)
    if nx == 0 or ny == 0:
        return 0.0
    value = torch.linalg.matrix_norm(cxy) ** 2 / (nx * ny)
    gxy = 2 * cxy / (nx * ny)
    gxx = -value * cxx / nx**2
    gyy = -value * cyy / ny**2
    var = _sd(gxy, dx, dy) ** 2 + 2 * _sd(gxx, dx, dx) ** 2 + 2 * _sd(gyy, dy, dy) ** 2
    return SIGMAS * s * float(torch.sqrt(var))
