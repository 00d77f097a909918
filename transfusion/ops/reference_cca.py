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
  * The resampling of ``transfusion.ops.resampling``: the chance pairing simulated row by row
    (``chance_pairing``) and bootstrap replicates as datasets with repeated rows (``bootstrap_values``).
"""
from __future__ import annotations

import numpy as np
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
    return _kernel_cka(xc @ xc.T, yc @ yc.T, debiased=True)


def _unbiased_hsic(k: torch.Tensor, lk: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    k = k - torch.diag(torch.diagonal(k))
    lk = lk - torch.diag(torch.diagonal(lk))
    one = torch.ones(n, dtype=torch.float64)
    # tr(K~ L~) = sum_ij K~_ij L~_ji and 1^T K~ L~ 1 = (K~^T 1).(L~ 1): O(n^2), no n^3 product
    return ((k * lk.T).sum() + (one @ k @ one) * (one @ lk @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * ((one @ k) @ (lk @ one))) / (n * (n - 3))


def _biased_hsic(k: torch.Tensor, lk: torch.Tensor) -> torch.Tensor:
    """tr(H K H H L H) with the centring matrix H = I - 11^T / n, as written (O(n^3))."""
    n = k.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    return torch.trace(h @ k @ h @ h @ lk @ h)


def _kernel_cka(k: torch.Tensor, lk: torch.Tensor, debiased: bool) -> float:
    hsic = _unbiased_hsic if debiased else _biased_hsic
    den = torch.sqrt(hsic(k, k) * hsic(lk, lk))
    return float(hsic(k, lk) / den) if den > 0 else 0.0


def rbf_cka(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0, debiased: bool = False) -> float:
    """RBF-kernel CKA as Kornblith et al.'s colab: squared distances from the row differences,
    K = exp(-d^2 / (2 sigma^2 median(d^2))) (numpy's median over all n^2 entries, diagonal
    included), then CKA from the biased HSIC tr(HKH HLH) or the unbiased one. O(n^2 width) memory."""
    def kernel(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(torch.float64)
        d = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)
        med = float(np.median(d.numpy()))
        return torch.exp(-d / (2 * sigma**2 * med))

    return _kernel_cka(kernel(x), kernel(y), debiased)


# ---- the resampling schemes of transfusion.ops.resampling, row by row ------------------------------

def chance_pairing(n: int, seed: int, block: int = 1024) -> torch.Tensor:
    """sigma (n,): datapoint i of x is paired with datapoint sigma[i] of y by the one-pass scheme
    of ``transfusion.ops.resampling`` (a pool of ``block`` y-rows; block j's permutation from
    numpy.random.default_rng([seed, 1, j]), the closing one from [seed, 1, 2^63 - 1]), simulated
    one datapoint at a time."""
    pool = [-1] * block
    head = []
    sigma = [-1] * n
    for i in range(n):
        j, t = divmod(i, block)
        if t == 0:
            perm = np.random.default_rng([seed, 1, j]).permutation(block)
        slot = int(perm[t])
        if j == 0:
            head.append(i)
        else:
            sigma[i] = pool[slot]
        pool[slot] = i
    filled = [s for s in (range(block) if n >= block else
                          np.random.default_rng([seed, 1, 0]).permutation(block)[:n])]
    order = np.random.default_rng([seed, 1, 2**63 - 1]).permutation(len(head))
    for t, i in enumerate(head):
        sigma[i] = pool[int(filled[int(order[t])])]
    return torch.tensor(sigma)


def bootstrap_values(fn, x: torch.Tensor, y: torch.Tensor, seed: int, replicates: int,
                     block: int = 1024) -> list[float]:
    """fn on each Poisson-bootstrap replicate: datapoint i repeated w_ri times, w from
    numpy.random.default_rng([seed, 0, i // block]).poisson(1, (block, replicates))[i % block]."""
    n = x.shape[0]
    w = np.concatenate([np.random.default_rng([seed, 0, j]).poisson(1.0, (block, replicates))
                        for j in range((n + block - 1) // block)])[:n]
    out = []
    for r in range(replicates):
        reps = torch.from_numpy(w[:, r].astype(np.int64))
        out.append(float(fn(x.repeat_interleave(reps, 0), y.repeat_interleave(reps, 0))))
    return out


def procrustes(x: torch.Tensor, y: torch.Tensor) -> float:
    """Orthogonal Procrustes similarity: the nuclear norm (sum of singular values, by SVD) of
    X^T Y for the centred layers each scaled to unit Frobenius norm."""
    xc, yc = _centred(x), _centred(y)
    nx, ny = xc.norm(), yc.norm()
    if nx == 0 or ny == 0:
        return 0.0
    return float(torch.linalg.svdvals((xc / nx).T @ (yc / ny)).sum())
