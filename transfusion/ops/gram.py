"""The Gram pass of (SV)CCA / PWCCA / CKA: float64 sufficient statistics of activation matrices.

``gram_pass([x_1, .., x_k], shift)`` sweeps once over the n rows of the concatenation
z = [x_1 .. x_k] - shift and returns ``(gram, colsum)`` = (z^T z, sum of z), both float64. With
``cross=False`` only the diagonal blocks x_i^T x_i are computed (the rest stays zero).

Numerics: rows are taken ``chunk_rows`` at a time; the shifted chunk is formed in the compute
dtype (float32 for float16 / bfloat16 / float32 input, float64 for float64 input), each block
product is one GEMM in that dtype (MKL / cuBLAS through ATen) and is added into float64. The shift
is the first chunk's column mean, so the float32 products are of centred-sized numbers, and
accumulating chunks in float64 keeps the error from growing with n. What float32 GEMMs still cost
(measured, AMD EPYC + MKL): about 1e-6 relative error per Gram entry, shorter GEMMs barely helping
(4e-7 with 64-row blocks); on the mean correlation 1.75e-8 for SVCCA of 512+512 Gaussian neurons
and up to 8.8e-7 (SVCCA, CCA) or 3.9e-6 (PWCCA) on small layers with offset means. Hence
``precision="auto"`` in similarity.py. Statistics are exact given the shift: mean = shift + colsum / n,
centred cross-products = gram - colsum colsum^T / n.

The compiled op ``torch.ops.transfusion.gram_pass`` (CPU and CUDA) fuses centring, the dtype
conversion and the column sums into one pass; ``gram_pass_torch`` is the same scheme written with
torch ops (used where the extension is missing; the benchmark compares both).
"""
from __future__ import annotations

import torch

from transfusion import _extension

_OP = "transfusion::gram_pass"
DEFAULT_CHUNK_ROWS = 32768  # measured: per-GEMM overhead drops from 8192 to 32768 rows


PRECISIONS = ("auto", "float32", "float64")


def compute_dtype(xs: list[torch.Tensor], precision: str = "auto") -> torch.dtype:
    """The GEMM dtype: float64 for precision="float64" or any float64 input, else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float64" or any(x.dtype == torch.float64 for x in xs):
        return torch.float64
    return torch.float32


def first_chunk_shift(xs: list[torch.Tensor], chunk_rows: int = DEFAULT_CHUNK_ROWS,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The per-column mean of the first ``chunk_rows`` rows, rounded to ``dtype`` (the compute
    dtype) and returned as float64: the exact value that gets subtracted."""
    parts = [x[:chunk_rows].to(torch.float64).mean(dim=0) for x in xs]
    return torch.cat(parts).to(dtype).to(torch.float64)


def _op_available(device: torch.device) -> bool:
    if not _extension.has_kernel(device):
        return False
    try:
        torch.ops.transfusion.gram_pass  # noqa: B018  (built before this op existed?)
    except (AttributeError, RuntimeError):
        return False
    return True


def gram_pass_torch(xs: list[torch.Tensor], shift: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                    cross: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram pass with torch ops only (same scheme as the compiled op; shift's dtype is the
    compute dtype)."""
    dtype = shift.dtype
    n = xs[0].shape[0]
    widths = [x.shape[1] for x in xs]
    offsets = [sum(widths[:i]) for i in range(len(xs))]
    total = sum(widths)
    dev = xs[0].device
    gram = torch.zeros(total, total, dtype=torch.float64, device=dev)
    colsum = torch.zeros(total, dtype=torch.float64, device=dev)
    shift_c = shift.to(device=dev, dtype=dtype)
    for r0 in range(0, n, max(1, chunk_rows)):
        bufs = []
        for x, o, w in zip(xs, offsets, widths):
            b = x[r0:r0 + chunk_rows].to(dtype) - shift_c[o:o + w]
            colsum[o:o + w] += b.sum(dim=0, dtype=torch.float64)
            bufs.append(b)
        for i in range(len(xs)):
            for j in range(i, len(xs) if cross else i + 1):
                oi, wi, oj, wj = offsets[i], widths[i], offsets[j], widths[j]
                gram[oi:oi + wi, oj:oj + wj] += bufs[i].T @ bufs[j]
    if cross:
        for i in range(len(xs)):
            for j in range(i + 1, len(xs)):
                oi, wi, oj, wj = offsets[i], widths[i], offsets[j], widths[j]
                gram[oj:oj + wj, oi:oi + wi] = gram[oi:oi + wi, oj:oj + wj].T
    return gram, colsum


def gram_pass(xs: list[torch.Tensor], shift: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS,
              cross: bool = True, dtype: torch.dtype | None = None,
              use_kernel: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gram, colsum) of the shifted concatenation; the compiled op when it exists for the device.

    ``shift``: float64 (W,), W the summed widths (from ``first_chunk_shift``); ``dtype``: the GEMM
    dtype (default ``compute_dtype(xs)``); ``use_kernel=False`` forces the torch version.
    """
    dev = xs[0].device
    dtype = compute_dtype(xs) if dtype is None else dtype
    if any(x.dtype == torch.float64 for x in xs):
        dtype = torch.float64
    shift = shift.to(device=dev, dtype=dtype)
    if use_kernel is None:
        use_kernel = _op_available(dev)
    if use_kernel:
        return torch.ops.transfusion.gram_pass(list(xs), shift, int(chunk_rows), bool(cross))
    return gram_pass_torch(xs, shift, chunk_rows, cross)


def _register() -> None:
    """Fake kernel so that torch.compile can trace through the op."""
    if not _extension.available():
        return
    try:
        torch.ops.transfusion.gram_pass  # noqa: B018
    except (AttributeError, RuntimeError):
        return

    @torch.library.register_fake(_OP)
    def _fake(xs, shift, chunk_rows, cross):
        total = sum(x.shape[1] for x in xs)
        return (xs[0].new_empty((total, total), dtype=torch.float64),
                xs[0].new_empty((total,), dtype=torch.float64))


_register()
