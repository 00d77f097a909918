"""Bootstrap intervals (``ci``) and the chance floor (``chance``) of the similarity ops, from the
same single pass over the datapoints as the statistics themselves (in memory and streamed).

Both work on the augmented shifted rows u_i = [z_i, p_i] of a group of layers: z_i = the
datapoint's activations of every layer minus a shift (the first rows' mean, float64), p_i = the
per-layer squared norms ||z_i^l||^2 (what debiased CKA needs). Sums of u and of u u^T give every
statistic of every pair of layers in the group (``moments``), exactly as the Gram pass does.

ci: Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012). Replicate r gives
datapoint i the weight w_ri ~ Poisson(1) (independent over i and r) and accumulates the weighted
count sum_i w_ri, column sums sum_i w_ri u_i and Gram sum_i w_ri u_i u_i^T; the replicate's
similarity is finalised from those exactly as the main one (a weight w means w copies of the
datapoint). Weights come from numpy's Generator seeded with (seed, block index) per block of
BLOCK_ROWS datapoints, so they depend only on the seed and the datapoint's position in the stream:
in memory and streamed (any batch sizes) get the same replicates. The interval is the percentile
interval re-centred on the value: the (1-ci)/2 and (1+ci)/2 quantiles of the replicate values
(linear interpolation between order statistics, numpy's default) moved by (value - the replicates'
median). Why re-centred: a resample repeats datapoints (about 63% distinct), which pushes the
CCA-family values up, by more than their spread unless n is large (measured: n = 4000, 12 and 9
neurons, SVCCA 0.3516, plain percentile interval (0.3543, 0.3684)); the replicates' spread is
what the bootstrap estimates well, their location is that artefact. So ``.ci`` brackets ``.mean``
and says how much it varies over datapoints; it does not remove the bias towards 1 that few
datapoints per neuron give (``.chance`` shows that floor). Cost: memory replicates x (W + k)^2 x 8 bytes
(W: the group's total width, k: its layers; 200 replicates of two 256-neuron layers: 403 MiB),
time replicates x one float64 Gram pass, plus replicates x pairs small eigenproblems at query.

chance: the similarity after pairing datapoint i of x with datapoint sigma(i) != i of y, sigma a
random permutation made in one pass: the stream is cut into blocks of BLOCK_ROWS datapoints and a
pool of BLOCK_ROWS y-rows is kept. Row t of block j >= 1 reads pool slot perm_j[t] (perm_j a seeded
random permutation of the block) for its partner, then writes its own y-row into that slot; block
0 only writes (its x-rows are kept as the head) and at the end the head is paired with what is
left in the pool through one more seeded permutation (closing the cycle). Every y-row is read
exactly once (a bijection); from block 1 on no row meets its own partner. x's and y's own
statistics are unchanged by a re-pairing, only the cross-block sum_i u_i u_sigma(i)^T (W + k)^2 is
accumulated. Cost: 2 x BLOCK_ROWS x (W + k) x 8 bytes of buffers plus one (W + k)^2 float64
matrix; time one more float64 Gram pass. The partners are at most about two blocks apart in
the stream, so the stream must come in random order (a shuffled loader): in a stream sorted by
class the partners would mostly share a class and the floor would be too high. With n <=
BLOCK_ROWS it is one uniformly random permutation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from transfusion.errors import InputError

DEFAULT_REPLICATES = 200
BLOCK_ROWS = 1024
# bytes of the (replicates, rows, W) temporary of the weighted Gram products
_TEMP_BYTES = 64 * 2**20
_CHANCE_STREAM = 1  # numpy seed-sequence tags: bootstrap weights 0, chance permutations 1
_CLOSING_BLOCK = -1


def check_options(ci: float | None, replicates: int | None, seed: int) -> None:
    """One-line errors for a bad ci level, replicate count or seed."""
    if ci is not None and not (isinstance(ci, (int, float)) and 0.0 < ci < 1.0):
        raise InputError(f"ci must be a confidence level in (0, 1) (e.g. 0.95), got {ci!r}")
    if replicates is not None and (isinstance(replicates, bool) or not isinstance(replicates, int)
                                   or replicates < 2):
        raise InputError(f"replicates must be an integer >= 2 (bootstrap replicates), got {replicates!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")


def poisson_weights(seed: int, start: int, rows: int, replicates: int) -> torch.Tensor:
    """(rows, replicates) float64 Poisson(1) weights of datapoints start .. start + rows - 1:
    block j = i // BLOCK_ROWS draws its (BLOCK_ROWS, replicates) weights from
    numpy.random.default_rng([seed, 0, j]), so a datapoint's weights depend only on its position."""
    out = []
    i = start
    while i < start + rows:
        j, t0 = divmod(i, BLOCK_ROWS)
        t1 = min(BLOCK_ROWS, t0 + start + rows - i)
        block = np.random.default_rng([seed, 0, j]).poisson(1.0, (BLOCK_ROWS, replicates))
        out.append(torch.from_numpy(block[t0:t1].astype(np.float64)))
        i += t1 - t0
    return torch.cat(out) if out else torch.zeros(0, replicates, dtype=torch.float64)


def block_permutation(seed: int, block: int, size: int = BLOCK_ROWS) -> torch.Tensor:
    """The seeded random permutation of ``size`` used for block ``block`` of the chance pairing."""
    rng = np.random.default_rng([seed, _CHANCE_STREAM, block % 2**63])
    return torch.from_numpy(rng.permutation(size))


def augmented(xs: Sequence[torch.Tensor], shift: torch.Tensor) -> torch.Tensor:
    """u = [z, p]: the shifted float64 rows of the layers and their per-layer squared norms."""
    z = torch.cat([x.to(torch.float64) for x in xs], 1) - shift
    p = torch.stack([t.square().sum(1) for t in z.split([x.shape[1] for x in xs], 1)], 1)
    return torch.cat([z, p], 1)


class Resampler:
    """Bootstrap replicate sums and / or the chance pairing's cross sums of one group of layers.

    ``update(xs)`` takes one batch of every layer (the same datapoints, in stream order).
    ``replicates``: bootstrap replicates (None: none); ``chance``: keep the re-paired cross sums."""

    def __init__(self, widths: Sequence[int], replicates: int | None, chance: bool, seed: int,
                 device: torch.device | str = "cpu") -> None:
        self.widths = [int(w) for w in widths]
        self.replicates, self.chance, self.seed = replicates, bool(chance), int(seed)
        self.n = 0
        self.shift: torch.Tensor | None = None
        size = sum(self.widths) + len(self.widths)
        f64 = dict(dtype=torch.float64, device=device)
        self.colsum = torch.zeros(size, **f64)
        if replicates:
            self.counts = torch.zeros(replicates, **f64)
            self.colsums = torch.zeros(replicates, size, **f64)
            self.grams = torch.zeros(replicates, size, size, **f64)
        if chance:
            self.head = torch.zeros(BLOCK_ROWS, size, **f64)
            self.pool = torch.zeros(BLOCK_ROWS, size, **f64)
            self.cross = torch.zeros(size, size, **f64)

    def update(self, xs: Sequence[torch.Tensor]) -> None:
        if self.shift is None:
            first = torch.cat([x[:BLOCK_ROWS].to(torch.float64) for x in xs], 1)
            self.shift = first.mean(0).to(self.colsum.device)
        u = augmented([x.to(self.colsum.device) for x in xs], self.shift)
        self.colsum += u.sum(0)
        if self.replicates:
            self._bootstrap(u)
        if self.chance:
            self._pair(u)
        self.n += u.shape[0]

    def _bootstrap(self, u: torch.Tensor) -> None:
        w = poisson_weights(self.seed, self.n, u.shape[0], self.replicates).to(u.device)
        self.counts += w.sum(0)
        self.colsums += w.T @ u
        step = max(1, _TEMP_BYTES // max(1, u.numel() * 8))
        for r0 in range(0, self.replicates, step):
            wu = w.T[r0:r0 + step, :, None] * u  # (step, rows, size)
            self.grams[r0:r0 + step] += wu.mT @ u

    def _pair(self, u: torch.Tensor) -> None:
        i = 0
        while i < u.shape[0]:
            j, t0 = divmod(self.n + i, BLOCK_ROWS)
            t1 = min(BLOCK_ROWS, t0 + u.shape[0] - i)
            piece = u[i:i + t1 - t0]
            slots = block_permutation(self.seed, j)[t0:t1].to(u.device)
            if j == 0:
                self.head[t0:t1] = piece
            else:
                self.cross += piece.T @ self.pool[slots]
            self.pool[slots] = piece
            i += t1 - t0

    def closed_cross(self) -> torch.Tensor:
        """sum_i u_i u_sigma(i)^T with the cycle closed (the head paired with the pool's rest);
        the state is left as it is, so more batches can follow."""
        h = min(self.n, BLOCK_ROWS)
        filled = (torch.arange(BLOCK_ROWS) if self.n >= BLOCK_ROWS
                  else block_permutation(self.seed, 0)[:h])
        order = block_permutation(self.seed, _CLOSING_BLOCK, h)
        slots = filled[order].to(self.pool.device)
        return self.cross + self.head[:h].T @ self.pool[slots]

    # ---- moments ---------------------------------------------------------------------------------

    def _spans(self, ia: int, ib: int) -> tuple[slice, slice, int, int]:
        offsets = [sum(self.widths[:i]) for i in range(len(self.widths))]
        total = sum(self.widths)
        sx = slice(offsets[ia], offsets[ia] + self.widths[ia])
        sy = slice(offsets[ib], offsets[ib] + self.widths[ib])
        return sx, sy, total + ia, total + ib

    def replicate_moments(self, ia: int, ib: int, input_dtype: str, row_norms: bool) -> list[Any]:
        """One ``similarity.Moments`` per bootstrap replicate for layers ia (x) and ib (y)."""
        from transfusion.ops.similarity import moments_from_sums

        sx, sy, pa, pb = self._spans(ia, ib)
        total = sum(self.widths)
        idx = torch.tensor([pa, pb], device=self.grams.device)
        out = []
        for r in range(self.replicates):
            cs, g = self.colsums[r], self.grams[r]
            rows = (g[idx][:, idx], g[idx, :total], cs[idx]) if row_norms else None
            out.append(moments_from_sums(float(self.counts[r]), self.shift, cs[:total],
                                         g[:total, :total], sx, sy, "float64", input_dtype, None, rows))
        return out

    def chance_moments(self, main: Any, ia: int, ib: int) -> Any:
        """``main`` (the pair's moments, any shift) with its cross-block, and the cross entry of its
        centred row-norm products, replaced by those of the re-paired datapoints."""
        sx, sy, pa, pb = self._spans(ia, ib)
        a = self.closed_cross()
        n, cs = self.n, self.colsum
        cxy = a[sx, sy] - torch.outer(cs[sx], cs[sy]) / n
        out = dataclasses.replace(main, cxy=cxy.to(main.cxy.device), entry_var=None)
        if main.row_norms is not None:
            d = main.row_norms.clone()
            d[0, 1] = d[1, 0] = cross_row_norm(n, cs, a, sx, sy, pa, pb).to(d.device)
            out.row_norms = d
        return out

    # ---- files -----------------------------------------------------------------------------------

    _TENSORS = ("shift", "colsum", "counts", "colsums", "grams", "head", "pool", "cross")

    def state_dict(self) -> dict[str, Any]:
        return {"widths": self.widths, "replicates": self.replicates, "chance": self.chance,
                "seed": self.seed, "n": self.n, "block_rows": BLOCK_ROWS,
                **{k: getattr(self, k).detach().cpu() for k in self._TENSORS
                   if getattr(self, k, None) is not None}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Resampler":
        if state["block_rows"] != BLOCK_ROWS:
            raise InputError(f"these statistics were resampled in blocks of {state['block_rows']} "
                             f"rows, this version uses {BLOCK_ROWS}; accumulate them again")
        r = cls(state["widths"], state["replicates"], state["chance"], state["seed"])
        r.n = int(state["n"])
        for k in cls._TENSORS:
            if k in state:
                setattr(r, k, state[k])
        return r

    def to(self, device: torch.device | str) -> "Resampler":
        for k in self._TENSORS:
            if getattr(self, k, None) is not None:
                setattr(self, k, getattr(self, k).to(device))
        return self


def cross_row_norm(n: int, cs: torch.Tensor, a: torch.Tensor, sx: slice, sy: slice, pa: int,
                   pb: int) -> torch.Tensor:
    """sum_i ||x_i - mx||^2 ||y_sigma(i) - my||^2 from the re-paired augmented cross sums ``a``
    (= sum_i u_i u_sigma(i)^T) and the column sums ``cs``: the expansion of
    ``similarity._centred_row_norms`` with every cross sum taken over the pairs (i, sigma(i));
    sums over one side alone do not depend on the pairing."""
    mx, my = cs[sx] / n, cs[sy] / n
    big_m, big_n = mx @ mx, my @ my
    return (a[pa, pb] - 2 * (my @ a[pa, sy]) - 2 * (mx @ a[sx, pb]) + 4 * (mx @ a[sx, sy] @ my)
            + big_n * cs[pa] + big_m * cs[pb] - 3 * n * big_m * big_n)


def percentile_interval(values: torch.Tensor, level: float, value: float) -> tuple[float, float]:
    """The (1-level)/2 and (1+level)/2 quantiles of the replicate values (linear interpolation),
    moved by value - their median: the percentile interval re-centred on the value."""
    q = np.quantile(values.detach().cpu().numpy(), [(1 - level) / 2, 0.5, (1 + level) / 2])
    return float(q[0] - q[1] + value), float(q[2] - q[1] + value)


def memory_bytes(widths: Sequence[int], replicates: int | None, chance: bool) -> int:
    """Bytes a Resampler of layers of these widths holds."""
    size = sum(widths) + len(widths)
    total = size * 8
    if replicates:
        total += replicates * (size * size + size + 1) * 8
    if chance:
        total += (2 * BLOCK_ROWS * size + size * size) * 8
    return total


def describe(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.1f} GiB"


__all__ = ["BLOCK_ROWS", "DEFAULT_REPLICATES", "Resampler", "check_options", "cross_row_norm",
           "percentile_interval", "poisson_weights", "block_permutation", "memory_bytes"]
