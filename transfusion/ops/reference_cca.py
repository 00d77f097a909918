"""Float64 pure-torch references of CCA, SVCCA, PWCCA and linear CKA: the test oracle.

Straight from the definitions (docs/paper.md, last section), on the full data matrices, no Gram
shortcut: centre each neuron; an orthonormal basis Q of each centred matrix comes from its thin SVD
(the left singular vectors of the directions kept); the canonical correlations are the singular
values of Q_x^T Q_y. Slow (O(n a^2) SVDs in float64) and simple on purpose.

Conventions shared with the fast ops (``transfusion.ops.similarity``):
  * x is (n, a), y is (n, b): rows are datapoints, columns neurons.
  * SVCCA keeps the smallest number of top singular directions whose squared singular values
    (variances) reach ``keep`` of the total.
  * CCA (no SVD truncation) works on the standardised neurons (constant ones, whose variance is
    below 1e-12 x (mean^2 + variance), dropped) and drops directions whose variance is below
    ``rtol`` times the largest (rank deficiency: dead units, duplicated neurons); SVCCA applies the
    same ``rtol`` cut besides the ``keep`` cut.
  * PWCCA weights correlation i by alpha_i = sum_j |<h_i, x_j>| (h_i the unit-norm canonical
    variate of x, x_j the centred neurons of x), normalised to sum 1 (Morcos et al. 2018).
  * Linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on the centred matrices.
"""
from __future__ import annotations

import torch

DEFAULT_RTOL = 1e-6
CONSTANT_TOL = 1e-12


def _centred(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def _basis(x: torch.Tensor, keep: float | None, rtol: float, standardise: bool) -> torch.Tensor:
    """Orthonormal basis (n, k) of the kept directions of x (centred here)."""
    x = x.detach().to(torch.float64)
    mean = x.mean(dim=0)
    xc = x - mean
    if standardise:
        # Constant (dead) neurons: variation below 1e-6 of their magnitude carries no direction.
        var = (xc**2).mean(dim=0)
        valid = var > CONSTANT_TOL * (mean**2 + var)
        xc = xc[:, valid] / xc[:, valid].norm(dim=0)
    if xc.shape[1] == 0:
        return xc
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    var = s**2
    k = int((var > rtol * var[0]).sum()) if var[0] > 0 else 0
    if keep is not None and var.sum() > 0:
        frac = torch.cumsum(var, 0) / var.sum()
        k = min(k, int((frac < keep - 1e-12).sum()) + 1)
    return u[:, :k]


def canonical(x: torch.Tensor, y: torch.Tensor, keep: float | None = None,
              rtol: float = DEFAULT_RTOL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(correlations, Q_x-side canonical variates h (n, m), centred x) in float64."""
    xc = _centred(x)
    qx = _basis(x, keep, rtol, standardise=keep is None)
    qy = _basis(y, keep, rtol, standardise=keep is None)
    u, rho, _ = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    m = min(qx.shape[1], qy.shape[1])
    return rho[:m].clamp(0.0, 1.0), qx @ u[:, :m], xc


def cca(x: torch.Tensor, y: torch.Tensor, rtol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Canonical correlations (descending, float64) of x (n, a) and y (n, b)."""
    return canonical(x, y, None, rtol)[0]


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99,
          rtol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Canonical correlations after keeping the top directions with ``keep`` of the variance."""
    return canonical(x, y, keep, rtol)[0]


def pwcca(x: torch.Tensor, y: torch.Tensor, rtol: float = DEFAULT_RTOL) -> tuple[float, torch.Tensor]:
    """(projection-weighted mean correlation, normalised weights alpha) with weights from x."""
    rho, h, xc = canonical(x, y, None, rtol)
    if rho.numel() == 0:
        return 0.0, rho
    alpha = (h.T @ xc).abs().sum(dim=1)
    alpha = alpha / alpha.sum()
    return float((alpha * rho).sum()), alpha


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of x (n, a) and y (n, b)."""
    xc, yc = _centred(x), _centred(y)
    num = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return float(num / den) if den > 0 else 0.0


def cka_debiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased linear CKA straight from the unbiased HSIC estimator (Song et al. 2012) on the full
    n x n kernels: centre the features, K = X X^T, L = Y Y^T with zeroed diagonals (K~, L~),
    HSIC_1(K, L) = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)),
    CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)) (Kornblith's colab, debiased=True).
    O(n^2) memory: for tests."""
    xc, yc = _centred(x), _centred(y)
    n = xc.shape[0]

    def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        k = k - torch.diag(torch.diagonal(k))
        l = l - torch.diag(torch.diagonal(l))
        one = torch.ones(n, dtype=torch.float64)
        # tr(K~ L~) = sum_ij K~_ij L~_ji and 1^T K~ L~ 1 = (K~^T 1).(L~ 1): O(n^2), no n^3 product
        return ((k * l.T).sum() + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * ((one @ k) @ (l @ one))) / (n * (n - 3))

    k, l = xc @ xc.T, yc @ yc.T
    den = torch.sqrt(hsic(k, k) * hsic(l, l))
    return float(hsic(k, l) / den) if den > 0 else 0.0


def procrustes(x: torch.Tensor, y: torch.Tensor) -> float:
    """Orthogonal Procrustes similarity: the nuclear norm (sum of singular values, by SVD) of
    X^T Y for the centred layers each scaled to unit Frobenius norm."""
    xc, yc = _centred(x), _centred(y)
    nx, ny = xc.norm(), yc.norm()
    if nx == 0 or ny == 0:
        return 0.0
    return float(torch.linalg.svdvals((xc / nx).T @ (yc / ny)).sum())
