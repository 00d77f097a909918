"""Streaming (SV)CCA / PWCCA / CKA / Procrustes: accumulate float64 sufficient statistics batch by batch.

    stats = CCAStatistics(groups={"ab": ["a.conv1", "a.block4", "b.conv1", "b.block4"]})
    handles = stats.attach({"a.conv1": net_a.conv1, ...})   # forward hooks, or stats.update(...)
    for images, *_ in loader:
        net_a(images); net_b(images)                          # both nets see the same batch
    stats.svcca("a.block4", "b.block4"); stats.cka("a.conv1", "b.conv1")
    stats.cka("a.conv1", "b.conv1", debiased=True); stats.procrustes("a.block4", "b.block4")

What is stored: for every group of layers accumulated jointly, the count n, a per-neuron shift
(the first batch's first-chunk mean), the float64 column sums and the float64 joint Gram of the
shifted concatenation [x_1 .. x_k] of the group's layers, and for debiased CKA the float64 sums of
the per-datapoint squared row norms p_i^l = ||z_i^l||^2 of each layer l of the shifted rows z_i:
sum_i p_i p_i^T (k x k), sum_i p_i z_i^T (k x width) and sum_i p_i (``similarity.row_norm_sums``;
O(batch x width x k) float64 work per batch). Every pair of layers inside a group is
then available (CCA between two layers needs their cross-products x_i^T x_j). Memory depends on
the widths, never on n: (sum of the group's widths)^2 * 8 bytes for the Gram (e.g. 4 layers of
512 neurons: 2048^2 * 8 = 32 MiB), plus, while a batch is folded in, the Gram pass's chunk buffer
(min(chunk_rows, batch rows) x sum of widths x 8 bytes; 4 with precision="float32") and one
temporary Gram. ``precision="float64"`` (default) makes the GEMMs exact to float64 rounding: the
data can't be revisited, so the fast float32 GEMMs are an opt-in. A float32 group also keeps the
rounding model's entry variances and systematic errors (``transfusion.ops.precision``: two more
Gram-sized float64 matrices), so every result carries its ``error_estimate`` and warns when that exceeds 1e-6.

Layers of one group must receive the same batches (the same datapoints in the same order): with
``update(name, act)`` a group waits until each of its layers got the current batch, then folds
them in together; ``update_many({name: act, ...})`` folds a complete batch at once. Layers in
different groups can't be compared (an InputError says so): declare the layers you will compare
in one group. Without ``groups`` every layer is its own group (only self-statistics).

4-D activations (N, C, H, W) go through ``conv_to_datapoints(act, pool, max_positions)`` with the
settings given here (position subsampling is seeded with the batch index, so the layers of a
group with the same grid get the same positions). Statistics merge exactly across processes
(``merge``; ``all_reduce`` for torch.distributed) and save / load with ``save`` / ``load``.

``replicates=200`` and / or ``chance=True`` (with ``seed``) also keep, per group, the bootstrap
replicate sums and the re-paired cross sums of ``transfusion.ops.resampling`` (its docstring has
the schemes): then ``stats.svcca(a, b, ci=0.95)`` gives ``.ci`` and ``stats.svcca(a, b,
chance=True)`` gives ``.chance``, the same numbers as ``ops.svcca(x, y, ci=0.95, chance=True,
seed=seed)`` on the concatenated batches of a two-layer group (any batch sizes). Memory per group
of width W over k layers: replicates x (W + k)^2 x 8 bytes, and 2 x 1024 x (W + k) x 8 +
(W + k)^2 x 8 bytes for chance; time: replicates (resp. one) float64 Gram passes more per batch.
Such statistics save / load, but do not merge (``merge`` / ``all_reduce`` refuse them).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from transfusion.errors import InputError
from transfusion.ops import gram as _gram
from transfusion.ops import precision as _precision
from transfusion.ops import resampling as _resampling
from transfusion.ops import similarity as _similarity
from transfusion.ops.datapoints import conv_to_datapoints
from transfusion.ops.similarity import (
    AUTO_TARGET,
    DEFAULT_RTOL,
    METHODS,
    SimilarityResult,
    _input_dtype,
    _small_linalg_threads,
    as_tensor,
    check_finite,
    finalise_many,
    moments_from_sums,
    warn_about,
)

FORMAT = "transfusion-cca-statistics"
STREAM_CHUNK_ROWS = 2048


@dataclass
class _Group:
    layers: list[str]
    widths: list[int] | None = None
    n: int = 0
    batches: int = 0
    dtype: str = ""
    input_dtype: str = "float64"
    scales: list[float] | None = None  # per-layer power-of-two scale (transfusion.ops.precision)
    shift: torch.Tensor | None = None
    colsum: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    # float32 groups: the rounding model's zero-mean entry variances and systematic entry errors
    entry_var: torch.Tensor | None = None
    entry_bias: torch.Tensor | None = None
    # debiased CKA: sums of the shifted rows' per-layer squared norms p_i (similarity.row_norm_sums):
    # sum p p^T (k, k), sum p z^T (k, W), sum p (k,); None in files saved before they existed
    row_products: torch.Tensor | None = None
    row_sums: torch.Tensor | None = None
    row_totals: torch.Tensor | None = None
    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    # replicates / chance: bootstrap and re-pairing sums (transfusion.ops.resampling)
    resampler: _resampling.Resampler | None = None

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if self.row_products is None or self.row_sums is None or self.row_totals is None:
            return None
        return self.row_products, self.row_sums, self.row_totals

    def span(self, name: str) -> slice:
        i = self.layers.index(name)
        o = sum(self.widths[:i])
        return slice(o, o + self.widths[i])


_ROW_KEYS = ("row_products", "row_sums", "row_totals")
_TENSOR_KEYS = ("shift", "colsum", "gram", "entry_var", "entry_bias") + _ROW_KEYS


def _rebase(n: int, shift: torch.Tensor, colsum: torch.Tensor, gram: torch.Tensor,
            new_shift: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
            widths: Sequence[int] | None = None):
    """The same statistics expressed around another shift (exact in float64): (colsum, gram), and
    with ``rows`` (the row-norm sums, ``widths`` the group's layer widths) (colsum, gram, rows).

    Rows: z' = z + d, so each layer's squared norm becomes p' = p + 2 e + D with e_i^l = z_i^l . d^l
    and D_l = ||d^l||^2. With B (k, W) holding d^l on layer l's columns (so e_i = B z_i):
    sum e = B colsum, sum p e^T = (sum p z^T) B^T, sum e e^T = B G B^T, sum e z^T = B G, hence
    sum p' = sum p + 2 B colsum + n D,
    sum p' p'^T = sum p p^T + 2 (S B^T + B S^T) + 4 B G B^T + (sum p + 2 B colsum) D^T
                  + D (sum p + 2 B colsum)^T + n D D^T                 (S = sum p z^T),
    sum p' z'^T = S + 2 B G + D colsum^T + (sum p') d^T."""
    d = shift - new_shift  # x - new = (x - shift) + d
    new_gram = gram + torch.outer(colsum, d) + torch.outer(d, colsum) + n * torch.outer(d, d)
    new_colsum = colsum + n * d
    if rows is None:
        return new_colsum, new_gram
    products, sums, totals = rows
    k = len(widths)
    b = d.new_zeros(k, d.numel())
    o = 0
    for i, w in enumerate(widths):
        b[i, o:o + w] = d[o:o + w]
        o += w
    dl = (b * b).sum(1)  # D
    be = b @ colsum  # sum e
    bg = b @ gram  # sum e z^T
    cross = sums @ b.T  # sum p e^T
    lin = totals + 2 * be
    new_products = (products + 2 * (cross + cross.T) + 4 * (bg @ b.T) + torch.outer(lin, dl)
                    + torch.outer(dl, lin) + n * torch.outer(dl, dl))
    new_totals = lin + n * dl
    new_sums = sums + 2 * bg + torch.outer(dl, colsum) + torch.outer(new_totals, d)
    return new_colsum, new_gram, (new_products, new_sums, new_totals)


class CCAStatistics:
    """Float64 sufficient statistics of many layers, for (SV)CCA / PWCCA / CKA / Procrustes of any pair."""

    def __init__(self, groups: Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | Sequence[str] | None = None,
                 *, pool: int | tuple[int, int] | None = None, max_positions: int | None = None,
                 chunk_rows: int = STREAM_CHUNK_ROWS, precision: str = "float64",
                 replicates: int | None = None, chance: bool = False, seed: int = 0) -> None:
        if precision not in ("float32", "float64"):
            raise InputError(f"precision must be 'float32' or 'float64', got {precision!r}")
        _resampling.check_options(None, replicates, seed)
        self.replicates, self.chance, self.seed = replicates, bool(chance), int(seed)
        self.precision = precision
        self.pool = pool
        self.max_positions = max_positions
        self.chunk_rows = int(chunk_rows)
        self._groups: dict[str, _Group] = {}
        self._group_of: dict[str, str] = {}
        self._declared = groups is not None
        if groups is None:
            return
        if isinstance(groups, Mapping):
            named = {str(k): list(v) for k, v in groups.items()}
        elif groups and all(isinstance(g, str) for g in groups):
            named = {"joint": list(groups)}
        else:
            named = {f"group{i}": list(g) for i, g in enumerate(groups)}
        for gname, layers in named.items():
            if not layers:
                raise InputError(f"group {gname!r} has no layers")
            self._add_group(gname, layers)

    def _add_group(self, gname: str, layers: list[str]) -> None:
        for layer in layers:
            if layer in self._group_of:
                raise InputError(f"layer {layer!r} is in two groups ({self._group_of[layer]!r} and "
                                 f"{gname!r}); a layer belongs to one group")
            self._group_of[layer] = gname
        self._groups[gname] = _Group(layers=list(layers))

    # ---- accumulation ----------------------------------------------------------------------------

    @property
    def layers(self) -> list[str]:
        return list(self._group_of)

    def _group(self, name: str) -> _Group:
        if name not in self._group_of:
            if self._declared:
                raise InputError(f"layer {name!r} is in no declared group; declared: {self.layers}")
            self._add_group(name, [name])
        return self._groups[self._group_of[name]]

    def _datapoints(self, act: Any, group: _Group) -> torch.Tensor:
        t = as_tensor(act, "activations")
        if t.dim() != 2:
            t = conv_to_datapoints(t, pool=self.pool, max_positions=self.max_positions,
                                   seed=group.batches, warn=False)
        return t

    @torch.compiler.disable
    def update(self, name: str, activations: Any) -> None:
        """Add one batch of one layer: (batch, neurons), or (N, C, H, W) conv activations."""
        group = self._group(name)
        if name in group.pending:
            missing = [m for m in group.layers if m not in group.pending]
            raise InputError(
                f"layer {name!r} got a second batch before {missing} got the first one; all layers "
                f"of a group must see the same batches (or use update_many)")
        group.pending[name] = self._datapoints(activations, group)
        if len(group.pending) == len(group.layers):
            xs = [group.pending.pop(m) for m in group.layers]
            self._fold(group, xs)

    @torch.compiler.disable
    def update_many(self, batch: Mapping[str, Any]) -> None:
        """Add one batch of several layers at once (each group present must be complete)."""
        for name, act in batch.items():
            self.update(name, act)

    def _fold(self, group: _Group, xs: list[torch.Tensor]) -> None:
        rows = {m: x.shape[0] for m, x in zip(group.layers, xs)}
        if len(set(rows.values())) != 1:
            raise InputError(
                f"layers of one group got different numbers of datapoints in a batch: {rows}; "
                f"pool conv layers to one grid (CCAStatistics(pool=...)) so rows match")
        widths = [x.shape[1] for x in xs]
        if group.widths is None:
            group.widths = widths
            dt = _gram.compute_dtype(xs, self.precision)
            group.scales = [_precision.power_of_two_scale(x, dt) for x in xs]
            group.input_dtype = _input_dtype(xs)
            xs = [x if c == 1.0 else x * c for x, c in zip(xs, group.scales)]
            group.shift = _gram.first_chunk_shift(xs, self.chunk_rows, dt).to(xs[0].device)
            total = sum(widths)
            group.colsum = torch.zeros(total, dtype=torch.float64, device=xs[0].device)
            group.gram = torch.zeros(total, total, dtype=torch.float64, device=xs[0].device)
            group.dtype = str(dt).replace("torch.", "")
            if dt == torch.float32:
                group.entry_var = torch.zeros_like(group.gram)
                group.entry_bias = torch.zeros_like(group.gram)
            group.row_products = group.gram.new_zeros(len(xs), len(xs))
            group.row_sums = group.gram.new_zeros(len(xs), total)
            group.row_totals = group.gram.new_zeros(len(xs))
        elif widths != group.widths:
            raise InputError(f"widths changed between batches: {widths} vs {group.widths} for {group.layers}")
        else:
            xs = [x if c == 1.0 else x * c for x, c in zip(xs, group.scales)]
            worst = _input_dtype(xs + [torch.empty(0, dtype=getattr(torch, group.input_dtype))])
            group.input_dtype = worst
        gram, colsum, chunk_sq = _gram.gram_pass(xs, group.shift, self.chunk_rows,
                                                 cross=len(xs) > 1, dtype=getattr(torch, group.dtype))
        check_finite(colsum, gram, [(f"layer {m!r}", group.span(m)) for m in group.layers])
        if group.entry_var is not None:
            rows = _gram.chunk_lengths(int(xs[0].shape[0]), self.chunk_rows)
            group.entry_var += _precision.entry_variance(chunk_sq, rows).to(group.entry_var.device)
            group.entry_bias += _precision.entry_bias(gram, rows).to(group.entry_bias.device)
        if group.rows() is not None:
            for acc, t in zip(group.rows(), _similarity.row_norm_sums(xs, group.shift, self.chunk_rows)):
                acc += t.to(acc.device)
        if self.replicates or self.chance:
            if group.resampler is None:
                group.resampler = _resampling.Resampler(widths, self.replicates, self.chance,
                                                        self.seed, group.gram.device)
            group.resampler.update(xs)
        group.gram += gram.to(group.gram.device)
        group.colsum += colsum.to(group.colsum.device)
        group.n += int(xs[0].shape[0])
        group.batches += 1

    def attach(self, modules: Mapping[str, torch.nn.Module]) -> list[Any]:
        """Forward hooks that feed each module's output to ``update(name, output)``; returns handles
        (call ``.remove()`` on each when done)."""
        def make(name: str):
            def hook(_module, _inputs, output):
                self.update(name, output.detach())
            return hook
        return [m.register_forward_hook(make(name)) for name, m in modules.items()]

    # ---- queries -----------------------------------------------------------------------------------

    def n(self, name: str) -> int:
        return self._group(name).n

    def memory_bytes(self) -> int:
        """Bytes held by the statistics (Grams + sums + shifts + row-norm sums)."""
        resampled = sum(_resampling.memory_bytes(g.widths, self.replicates, self.chance)
                        for g in self._groups.values() if g.resampler is not None)
        return resampled + sum(t.numel() * t.element_size() for g in self._groups.values()
                               for t in (getattr(g, k) for k in _TENSOR_KEYS) if t is not None)

    def _moments(self, a: str, b: str, debiased: bool = False):
        for name in (a, b):
            if name not in self._group_of:
                raise InputError(f"no statistics for layer {name!r}; layers: {self.layers}")
        ga, gb = self._group_of[a], self._group_of[b]
        if ga != gb:
            raise InputError(
                f"layers {a!r} and {b!r} were accumulated in different groups ({ga!r}, {gb!r}), so "
                f"their cross-products are unknown; declare them in one group: "
                f"CCAStatistics(groups=[[{a!r}, {b!r}, ...]])")
        g = self._groups[ga]
        if g.pending:
            raise InputError(f"group {ga!r} has an incomplete batch (got {sorted(g.pending)}, "
                             f"waiting for the others of {g.layers})")
        if g.n < 2:
            raise InputError(f"need at least 2 datapoints for {a!r} and {b!r}, have {g.n}")
        rows = None
        if debiased:
            if g.n < 4:
                raise InputError(f"debiased CKA needs at least 4 datapoints (the unbiased HSIC "
                                 f"divides by n - 3), have {g.n} for {a!r} and {b!r}")
            if g.rows() is None:
                raise InputError(f"group {ga!r} has no per-datapoint row-norm sums (statistics saved "
                                 f"before they were kept, or merged with such); debiased CKA needs "
                                 f"them: accumulate the statistics again")
            idx = torch.tensor([g.layers.index(a), g.layers.index(b)], device=g.row_products.device)
            products, sums, totals = g.rows()
            rows = (products[idx][:, idx], sums[idx], totals[idx])
        var = None if g.entry_var is None else g.entry_var + g.entry_bias**2
        return moments_from_sums(g.n, g.shift, g.colsum, g.gram, g.span(a), g.span(b), g.dtype,
                                 g.input_dtype, var, rows)

    def similarity(self, a: str | Sequence[str], b: str | Sequence[str], method: str = "svcca",
                   keep: float = 0.99, rtol: float = DEFAULT_RTOL, debiased: bool = False,
                   ci: float | None = None, chance: bool = False):
        """One result for two layer names; for two lists of names, a list of results per pair
        (zip), with the eigendecompositions batched. ``debiased``: for method="cka" only.
        ``ci`` / ``chance``: the bootstrap interval / chance floor (module docstring); need the
        statistics made with ``replicates=`` / ``chance=True``."""
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        _resampling.check_options(ci, None, self.seed)
        if ci is not None and not self.replicates:
            raise InputError("ci needs bootstrap replicates accumulated with the statistics: "
                             "CCAStatistics(..., replicates=200) and feed the batches again")
        if chance and not self.chance:
            raise InputError("chance needs the re-paired sums accumulated with the statistics: "
                             "CCAStatistics(..., chance=True) and feed the batches again")
        if debiased and method != "cka":
            raise InputError(f"debiased=True is for method='cka', got method={method!r}")
        batched = not isinstance(a, str)
        pairs = list(zip(a, b)) if batched else [(a, b)]
        moments = [self._moments(x, y, debiased) for x, y in pairs]
        with _small_linalg_threads(moments[0].cxx.device):
            results = finalise_many(method, moments, keep, rtol, debiased)
        for (x, y), r in zip(pairs, results):
            if r.dtype == "float32" and r.error_estimate is not None and r.error_estimate > AUTO_TARGET:
                warnings.warn(
                    f"{method}({x!r}, {y!r}): statistics were accumulated with float32 GEMMs and "
                    f"the rounding model puts this result's error near {r.error_estimate:.1g} "
                    f"(target {AUTO_TARGET:g}); accumulate with precision='float64'.",
                    RuntimeWarning, stacklevel=2)
        if ci is not None or chance:
            for (x, y), m, r in zip(pairs, moments, results):
                g = self._groups[self._group_of[x]]
                _similarity.add_resampled(r, g.resampler, g.layers.index(x), g.layers.index(y), m,
                                          keep, rtol, debiased, ci, chance)
        warn_about(results, where=f" of {pairs[0]}" if not batched else "")
        return results if batched else results[0]

    def svcca(self, a, b, keep: float = 0.99, rtol: float = DEFAULT_RTOL, *, ci: float | None = None,
              chance: bool = False) -> SimilarityResult:
        return self.similarity(a, b, "svcca", keep, rtol, ci=ci, chance=chance)

    def cca(self, a, b, rtol: float = DEFAULT_RTOL, *, ci: float | None = None,
            chance: bool = False) -> SimilarityResult:
        return self.similarity(a, b, "cca", rtol=rtol, ci=ci, chance=chance)

    def pwcca(self, a, b, rtol: float = DEFAULT_RTOL, *, ci: float | None = None,
              chance: bool = False) -> SimilarityResult:
        return self.similarity(a, b, "pwcca", rtol=rtol, ci=ci, chance=chance)

    def cka(self, a, b, debiased: bool = False, *, ci: float | None = None, chance: bool = False,
            kernel: str = "linear") -> SimilarityResult:
        """Linear CKA; ``debiased=True``: from the unbiased HSIC (``similarity.cka``), n >= 4.
        RBF CKA needs the n x n kernels, which streamed statistics do not have."""
        if kernel != "linear":
            raise InputError(f"kernel={kernel!r} needs the n x n kernels, so it is in memory only: "
                             f"ops.cka(x, y, kernel='rbf') on at most "
                             f"{_similarity.RBF_MAX_DATAPOINTS} datapoints")
        return self.similarity(a, b, "cka", debiased=debiased, ci=ci, chance=chance)

    def procrustes(self, a, b, *, ci: float | None = None, chance: bool = False) -> SimilarityResult:
        """Orthogonal Procrustes similarity (``similarity.procrustes``)."""
        return self.similarity(a, b, "procrustes", ci=ci, chance=chance)

    # ---- merging, distributed, files ------------------------------------------------------------

    def merge(self, other: "CCAStatistics") -> "CCAStatistics":
        """Add another accumulator's statistics (same groups; e.g. from another process).

        Both must be made with the same settings (pool, max_positions, chunk_rows, precision), be
        different objects, and have no half-finished batch: anything else raises an InputError."""
        if not isinstance(other, CCAStatistics):
            raise InputError(f"merge needs another CCAStatistics, got {type(other).__name__}")
        if other is self:
            raise InputError("cannot merge statistics with themselves (that would count every "
                             "datapoint twice); merge a copy made from other data")
        if self.replicates or self.chance or other.replicates or other.chance:
            raise InputError("statistics with bootstrap replicates or chance pairing do not merge "
                             "(the weights and the pairing follow one stream); accumulate them in one "
                             "process, or merge statistics made without replicates= / chance=")
        for key in ("pool", "max_positions", "chunk_rows", "precision"):
            here, there = getattr(self, key), getattr(other, key)
            if (list(here) if isinstance(here, (list, tuple)) else here) != \
                    (list(there) if isinstance(there, (list, tuple)) else there):
                raise InputError(f"cannot merge statistics made with {key}={there!r} into ones made "
                                 f"with {key}={here!r}; accumulate both with the same settings")
        for name, acc in (("these", self), ("the other", other)):
            busy = [gname for gname, g in acc._groups.items() if g.pending]
            if busy:
                raise InputError(f"{name} statistics have an incomplete batch in group(s) {busy}; "
                                 f"feed every layer of the group the batch before merging")
        for gname, og in other._groups.items():
            if og.n == 0:
                continue
            if gname not in self._groups:
                if self._declared:
                    raise InputError(f"group {gname!r} of the other statistics is not declared here")
                self._add_group(gname, og.layers)
            g = self._groups[gname]
            if g.layers != og.layers:
                raise InputError(f"group {gname!r} has layers {og.layers} there and {g.layers} here")
            if g.n == 0:
                g.widths, g.dtype = list(og.widths), og.dtype
                g.input_dtype, g.scales = og.input_dtype, list(og.scales or [1.0] * len(og.widths))
                g.shift, g.colsum, g.gram = og.shift.clone(), og.colsum.clone(), og.gram.clone()
                g.entry_var = None if og.entry_var is None else og.entry_var.clone()
                g.entry_bias = None if og.entry_bias is None else og.entry_bias.clone()
                for k in _ROW_KEYS:
                    setattr(g, k, None if og.rows() is None else getattr(og, k).clone())
            else:
                if og.widths != g.widths:
                    raise InputError(f"group {gname!r}: widths {og.widths} there, {g.widths} here")
                if og.dtype != g.dtype:
                    raise InputError(f"group {gname!r}: GEMMs in {og.dtype} there and {g.dtype} "
                                     f"here; accumulate both with the same precision and inputs")
                if list(og.scales or []) != list(g.scales or []):
                    raise InputError(f"group {gname!r}: the layers were rescaled differently there "
                                     f"({og.scales}) and here ({g.scales}); accumulate both from "
                                     f"activations of the same magnitude")
                dev = g.shift.device
                both = g.rows() is not None and og.rows() is not None
                rows = tuple(t.to(dev) for t in og.rows()) if both else None
                out = _rebase(og.n, og.shift.to(dev), og.colsum.to(dev), og.gram.to(dev), g.shift,
                              rows, g.widths)
                g.colsum += out[0]
                g.gram += out[1]
                if both:
                    for acc, t in zip(g.rows(), out[2]):
                        acc += t
                else:  # one side has none (an old file): debiased CKA is unavailable
                    g.row_products = g.row_sums = g.row_totals = None
                if g.entry_var is not None and og.entry_var is not None:
                    g.entry_var += og.entry_var.to(g.entry_var.device)
                    g.entry_bias += og.entry_bias.to(g.entry_bias.device)
            g.n += og.n
            g.batches += og.batches
        return self

    def all_reduce(self, group: Any = None) -> "CCAStatistics":
        """Sum the statistics over the processes of a torch.distributed group (in place).

        Every process must have accumulated every group (same layers, same widths). The shift of
        the group's first rank is broadcast and each process re-expresses its sums around it
        before the sums are all-reduced; the result is exact, as if one process saw all batches.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise InputError("all_reduce needs torch.distributed to be initialised (init_process_group)")
        if self.replicates or self.chance:
            raise InputError("statistics with bootstrap replicates or chance pairing do not "
                             "all_reduce (the weights and the pairing follow one stream); accumulate "
                             "them in one process")
        src = dist.get_global_rank(group, 0) if group is not None else 0
        for gname in sorted(self._groups):
            g = self._groups[gname]
            if g.pending:
                raise InputError(f"group {gname!r} has an incomplete batch; finish it before all_reduce")
            dev = g.gram.device if g.gram is not None else torch.device("cpu")
            have = torch.tensor([1.0 if g.n > 0 else 0.0, 1.0 if g.rows() is not None else 0.0],
                                dtype=torch.float64, device=dev)
            dist.all_reduce(have, op=dist.ReduceOp.MIN, group=group)
            if have[1].item() == 0:  # some process has none (an old file): drop them everywhere
                g.row_products = g.row_sums = g.row_totals = None
            if have[0].item() == 0:
                raise InputError(f"group {gname!r} has no data on some process; every process must "
                                 f"feed every group before all_reduce")
            shift = g.shift.clone()
            dist.broadcast(shift, src=src, group=group)
            out = _rebase(g.n, g.shift, g.colsum, g.gram, shift, g.rows(), g.widths)
            g.colsum, g.gram = out[0], out[1]
            if g.rows() is not None:
                g.row_products, g.row_sums, g.row_totals = out[2]
            g.shift = shift
            count = torch.tensor([float(g.n), float(g.batches)], dtype=torch.float64, device=dev)
            extra = () if g.entry_var is None else (g.entry_var, g.entry_bias)
            extra += g.rows() or ()
            for t in (g.colsum, g.gram, count) + extra:
                dist.all_reduce(t, group=group)
            g.n, g.batches = int(count[0].item()), int(count[1].item())
        return self

    def state_dict(self) -> dict[str, Any]:
        groups = {}
        for gname, g in self._groups.items():
            groups[gname] = {
                "layers": list(g.layers), "widths": g.widths, "n": g.n, "batches": g.batches,
                "dtype": g.dtype, "input_dtype": g.input_dtype, "scales": g.scales,
                **{k: None if getattr(g, k) is None else getattr(g, k).detach().cpu()
                   for k in _TENSOR_KEYS},
            }
            if g.resampler is not None:
                groups[gname]["resampler"] = g.resampler.state_dict()
        return {"format": FORMAT, "version": 1, "declared": self._declared, "pool": self.pool,
                "precision": self.precision,
                **({"replicates": self.replicates, "chance": self.chance, "seed": self.seed}
                   if self.replicates or self.chance else {}),
                "max_positions": self.max_positions, "chunk_rows": self.chunk_rows, "groups": groups}

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics (torch.save, atomically); ``CCAStatistics.load`` reads them."""
        from transfusion.utils import atomic_torch_save

        if any(g.pending for g in self._groups.values()):
            raise InputError("a group has an incomplete batch; finish it before saving")
        atomic_torch_save(path, self.state_dict())

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], source: str = "the state dict") -> "CCAStatistics":
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise InputError(f"{source} is not CCAStatistics (format {found!r}); pass a file "
                             f"written by CCAStatistics.save")
        try:
            return cls._from_checked_state(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{source} is a damaged CCAStatistics file ({type(exc).__name__}: "
                             f"{exc}); save the statistics again") from None

    @classmethod
    def _from_checked_state(cls, state: Mapping[str, Any]) -> "CCAStatistics":
        groups = {k: v["layers"] for k, v in state["groups"].items()}
        stats = cls(groups if state["declared"] else None, pool=state["pool"],
                    max_positions=state["max_positions"], chunk_rows=state["chunk_rows"],
                    precision=state.get("precision", "float64"), replicates=state.get("replicates"),
                    chance=bool(state.get("chance", False)), seed=int(state.get("seed", 0)))
        for gname, v in state["groups"].items():
            if gname not in stats._groups:
                stats._add_group(gname, v["layers"])
            g = stats._groups[gname]
            g.widths, g.n, g.batches, g.dtype = v["widths"], v["n"], v["batches"], v["dtype"]
            g.input_dtype = v.get("input_dtype", "float64")
            g.scales = v.get("scales") or (None if v["widths"] is None else [1.0] * len(v["widths"]))
            g.shift, g.colsum, g.gram = v["shift"], v["colsum"], v["gram"]
            g.entry_var, g.entry_bias = v.get("entry_var"), v.get("entry_bias")
            if (g.entry_var is None) != (g.entry_bias is None):
                g.entry_var = g.entry_bias = None
            for k in _ROW_KEYS:  # absent in files saved before debiased CKA
                setattr(g, k, v.get(k))
            if g.rows() is None:
                g.row_products = g.row_sums = g.row_totals = None
            if v.get("resampler") is not None:
                g.resampler = _resampling.Resampler.from_state_dict(v["resampler"])
        return stats

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "CCAStatistics":
        """Statistics written by ``save``; a missing, truncated, empty, text or foreign file gives
        a one-line InputError (files are read with weights_only=True: nothing in them runs)."""
        from transfusion.checkpoints import load_torch_file
        from transfusion.errors import CheckpointError

        try:
            state = load_torch_file(path, "CCAStatistics file",
                                    "pass a file written by CCAStatistics.save")
        except CheckpointError as exc:
            raise InputError(str(exc)) from None
        stats = cls.from_state_dict(state, source=f"{str(path)!r}")
        if torch.device(map_location).type != "cpu":
            for g in stats._groups.values():
                for k in _TENSOR_KEYS:
                    if getattr(g, k) is not None:
                        setattr(g, k, getattr(g, k).to(map_location))
                if g.resampler is not None:
                    g.resampler.to(map_location)
        return stats

    def __repr__(self) -> str:
        parts = [f"{k}: {g.layers} n={g.n}" for k, g in self._groups.items()]
        return f"CCAStatistics({'; '.join(parts)}; {self.memory_bytes() / 2**20:.1f} MiB)"
