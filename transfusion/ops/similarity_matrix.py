"""Every layer against every layer: the cross-layer similarity map of two models (or one model at
two times) from one pass over the data.

    >>> m = similarity_matrix({"conv1": a1, "block1": a2}, {"conv1": b1, "block1": b2}, method="cka")
    >>> m.values        # (2, 2) float64: rows = the first model's layers, columns = the second's
    >>> m.results[0][1] # the full SimilarityResult of (first model's conv1, second model's block1)

How: all layers go into one ``CCAStatistics`` group, so one Gram pass over the concatenated
activations gives every layer's cross-products with every other (memory: (sum of widths)^2 x 8
bytes, independent of n), and the small eigenproblems of all pairs are solved batched. Conv
activations (N, C, H, W) of different depths have different grids, so each is average-pooled to
``pool`` x ``pool`` positions per image (``conv_to_datapoints``): the rows of every layer are then
the same datapoints (image i, position p), as CCA and CKA require. 2-D activations (N, C) are used
as they are (pool does not apply), so mix them with conv layers only at ``pool=1``.

For activations that do not fit in memory, accumulate a ``CCAStatistics`` yourself (one group with
every layer) and call ``similarity_matrix_from(stats, rows, cols, method)``.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from transfusion.errors import InputError
from transfusion.ops.cca_statistics import CCAStatistics
from transfusion.ops.similarity import METHODS, SimilarityResult


@dataclass
class SimilarityMatrix:
    """``values[i, j]`` = similarity(rows[i], cols[j]) by ``method``; ``results`` holds each pair's
    full SimilarityResult (coefficients, kept directions, warnings' flags)."""

    method: str
    rows: list[str]
    cols: list[str]
    values: torch.Tensor
    n: int
    results: list[list[SimilarityResult]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "rows": list(self.rows), "cols": list(self.cols),
                "values": self.values.tolist(), "n": int(self.n)}

    def __repr__(self) -> str:
        width = max([len(c) for c in self.cols] + [6])
        head = " " * max(len(r) for r in self.rows) + " " + " ".join(c.rjust(width) for c in self.cols)
        lines = [f"SimilarityMatrix(method={self.method!r}, n={self.n})", head]
        pad = max(len(r) for r in self.rows)
        for r, vals in zip(self.rows, self.values.tolist()):
            lines.append(r.ljust(pad) + " " + " ".join(f"{v:.3f}".rjust(width) for v in vals))
        return "\n".join(lines)


def _named(acts: Mapping[str, Any] | Sequence[Any], side: str) -> dict[str, Any]:
    if isinstance(acts, Mapping):
        named = {str(k): v for k, v in acts.items()}
    elif isinstance(acts, (list, tuple)):
        named = {f"{side}{i}": v for i, v in enumerate(acts)}
    else:
        raise InputError(f"similarity_matrix takes a dict {{layer name: activations}} or a list of "
                         f"activations per model, got {type(acts).__name__}")
    if not named:
        raise InputError("similarity_matrix needs at least one layer per model")
    return named


def similarity_matrix(acts_a: Mapping[str, Any] | Sequence[Any],
                      acts_b: Mapping[str, Any] | Sequence[Any] | None = None, method: str = "cka", *,
                      pool: int | tuple[int, int] | None = 2, max_positions: int | None = None,
                      precision: str = "float64", keep: float = 0.99) -> SimilarityMatrix:
    """The cross-layer map of ``acts_a`` (rows) against ``acts_b`` (columns; default: acts_a
    against itself). Each value is an activation tensor (N, C, H, W) or (N, C) of the same N
    images (torch, numpy or cupy). ``method``: "cka" (default), "svcca", "cca", "pwcca" or any
    method of ``transfusion.ops``."""
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    a = _named(acts_a, "a")
    b = a if acts_b is None else _named(acts_b, "b")
    ka = {f"a:{k}": v for k, v in a.items()}
    kb = ka if acts_b is None else {f"b:{k}": v for k, v in b.items()}
    layers = {**ka, **kb}
    stats = CCAStatistics(groups=[list(layers)], pool=pool, max_positions=max_positions,
                          precision=precision)
    stats.update_many(layers)
    matrix = similarity_matrix_from(stats, list(ka), list(kb), method, keep=keep)
    matrix.rows = list(a)
    matrix.cols = list(b)
    return matrix


def similarity_matrix_from(stats: CCAStatistics, rows: Sequence[str], cols: Sequence[str],
                           method: str = "cka", *, keep: float = 0.99) -> SimilarityMatrix:
    """The cross-layer map from accumulated statistics (every layer in one group)."""
    pairs = list(itertools.product(rows, cols))
    if not pairs:
        raise InputError("similarity_matrix needs at least one layer per side")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = stats.similarity([p for p, _ in pairs], [q for _, q in pairs], method, keep=keep)
    def shown(p: str, q: str) -> str:
        return f"{p.split(':', 1)[-1]} vs {q.split(':', 1)[-1]}"

    dead = [shown(p, q) for (p, q), r in zip(pairs, results) if any(r.dropped)]
    few = [shown(p, q) for (p, q), r in zip(pairs, results) if r.few_datapoints]
    if dead or few:  # one summary instead of a warning per pair
        parts = []
        if few:
            parts.append(f"{len(few)} pair(s) have fewer than 10 datapoints per neuron (biased towards "
                         f"1; e.g. {few[0]}): feed more images or a larger pool")
        if dead:
            parts.append(f"{len(dead)} pair(s) left out constant (dead) neurons (e.g. {dead[0]})")
        warnings.warn(f"similarity_matrix ({method}): " + "; ".join(parts)
                      + "; per-pair details in matrix.results[i][j]", RuntimeWarning, stacklevel=3)
    for w in caught:  # anything else is passed on as it came
        text = str(w.message)
        if "constant (dead) neurons" not in text and "biased towards" not in text:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    grid = [results[i * len(cols):(i + 1) * len(cols)] for i in range(len(rows))]
    values = torch.tensor([[r.mean for r in row] for row in grid], dtype=torch.float64)
    return SimilarityMatrix(method, list(rows), list(cols), values, stats.n(rows[0]), grid)
