"""The Gram pass of (SV)CCA / PWCCA / CKA: float64 sufficient statistics of activation matrices.

``gram_pass([x_1, .., x_k], shift)`` sweeps once over the n rows of the concatenation
z = [x_1 .. x_k] - shift and returns ``(gram, colsum, chunk_sq)`` = (z^T z, sum of z, the squared
column norms of z chunk by chunk), all float64; gram's diagonal is chunk_sq's total, summed in
float64 (exact squares), not taken from the GEMM. With ``cross=False`` only the diagonal blocks
x_i^T x_i are computed (the rest stays zero). ``chunk_sq`` (chunks, W) is what the rounding model of
``transfusion.ops.precision`` needs to bound a float32 Gram's error whatever the BLAS's summation
order.

``gram_pass_groups`` takes the cross blocks within groups of consecutive inputs only (the pairs
of a batched call in one sweep).

Work: the compiled CPU op forms only the upper triangle of each chunk's Gram (block rows of 128
columns, 36/64 of the full product at 1024 columns; the lower triangle is mirrored), the CUDA op
one strided-batched cuBLAS GEMM over several chunks (see csrc/include/transfusion/gram_pass.h).

Numerics: rows are taken ``chunk_rows`` at a time; the shifted chunk is formed in the compute
dtype (float32 for float16 / bfloat16 / float32 input, float64 for float64 input), each block
product is one GEMM in that dtype (MKL / cuBLAS through ATen) and is added into float64. The shift
is the first chunk's column mean, so the float32 products are of centred-sized numbers, and
accumulating chunks in float64 keeps the error from growing with n. A float32 Gram entry's error
depends on the machine's summation order inside a chunk (measured: the same SVCCA was 8.8e-7 off
float64 on an AMD EPYC and 1.36e-6 on an Intel Xeon), so ``precision="auto"`` in similarity.py
decides from an order-independent bound (``transfusion.ops.precision``) whose systematic part
grows with the chunk length: hence 1024-row chunks (measured, 512+512 neurons, n = 100k, 2-core
AMD EPYC + MKL, one run: 1.02 s per float32 pass at 1024 rows, 0.95 s at 4096, 1.12 s at 32768;
bench/RESULTS.md). The diagonal (sums of squares, where float32 rounding leans one way) is
summed in float64 from the exact squares.
float32 GEMMs run at the "highest" float32 matmul precision whatever the caller set (TF32 or
bfloat16 internals would void the bound). Statistics are exact given the shift:
mean = shift + colsum / n, centred cross-products = gram - colsum colsum^T / n.

The compiled op ``torch.ops.transfusion.gram_pass`` (CPU and CUDA) fuses centring, the dtype
conversion and the column sums into one pass; ``gram_pass_torch`` is the same scheme written with
torch ops (used where the extension is missing; the benchmark compares both).
"""
from __future__ import annotations

import contextlib

import torch

from transfusion import _extension
from transfusion.ops import dispatch

_OP = "transfusion::gram_pass"
# measured (module docstring): as fast as longer chunks, and the float32 error bound grows with it
DEFAULT_CHUNK_ROWS = 1024


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


@contextlib.contextmanager
def _full_float32_matmul():
    """float32 GEMMs in full float32 (no TF32 / bfloat16 internals) for the duration."""
    before = torch.get_float32_matmul_precision()
    if before == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def n_chunks(n: int, chunk_rows: int) -> int:
    chunk = max(1, min(int(chunk_rows), int(n)))
    return 0 if n == 0 else -(-int(n) // chunk)


def chunk_lengths(n: int, chunk_rows: int) -> torch.Tensor:
    """Rows in each chunk of the Gram pass (float64, one entry per row of ``chunk_sq``)."""
    chunk = max(1, min(int(chunk_rows), int(n)))
    k = n_chunks(n, chunk_rows)
    rows = torch.full((k,), float(chunk), dtype=torch.float64)
    if k:
        rows[-1] = float(n - chunk * (k - 1))
    return rows


def gram_pass_torch(xs: list[torch.Tensor], shift: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                    cross: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    chunk = max(1, min(int(chunk_rows), n))
    chunk_sq = torch.zeros(n_chunks(n, chunk_rows), total, dtype=torch.float64, device=dev)
    shift_c = shift.to(device=dev, dtype=dtype)
    for r0 in range(0, n, chunk):
        bufs = []
        for x, o, w in zip(xs, offsets, widths):
            b = x[r0:r0 + chunk].to(dtype) - shift_c[o:o + w]
            colsum[o:o + w] += b.sum(dim=0, dtype=torch.float64)
            chunk_sq[r0 // chunk, o:o + w] = (b.to(torch.float64) ** 2).sum(dim=0)
            bufs.append(b)
        for i in range(len(xs)):
            for j in range(i, len(xs) if cross else i + 1):
                oi, wi, oj, wj = offsets[i], widths[i], offsets[j], widths[j]
                prod = bufs[i].T @ bufs[j]
                gram[oi:oi + wi, oj:oj + wj] += prod
    gram.diagonal().copy_(chunk_sq.sum(dim=0))
    if cross:
        for i in range(len(xs)):
            for j in range(i + 1, len(xs)):
                oi, wi, oj, wj = offsets[i], widths[i], offsets[j], widths[j]
                gram[oj:oj + wj, oi:oi + wi] = gram[oi:oi + wi, oj:oj + wj].T
    return gram, colsum, chunk_sq


def _pass_shift(xs: list[torch.Tensor], shift: torch.Tensor, dtype: torch.dtype | None
                ) -> tuple[torch.device, torch.Tensor]:
    """(device, shift in the pass's GEMM dtype): ``dtype`` or ``compute_dtype(xs)``, float64
    whenever an input is float64."""
    dev = xs[0].device
    dtype = compute_dtype(xs) if dtype is None else dtype
    if any(x.dtype == torch.float64 for x in xs):
        dtype = torch.float64
    return dev, shift.to(device=dev, dtype=dtype)


def gram_pass(xs: list[torch.Tensor], shift: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS,
              cross: bool = True, dtype: torch.dtype | None = None,
              use_kernel: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gram, colsum, chunk_sq) of the shifted concatenation; the compiled op when it exists for
    the device.

    ``shift``: float64 (W,), W the summed widths (from ``first_chunk_shift``); ``dtype``: the GEMM
    dtype (default ``compute_dtype(xs)``); ``use_kernel=False`` forces the torch version.
    """
    dev, shift = _pass_shift(xs, shift, dtype)
    if use_kernel is None:
        use_kernel = dispatch.has_kernel("gram_pass", dev)
    with _full_float32_matmul():
        if use_kernel:
            return torch.ops.transfusion.gram_pass(list(xs), shift, int(chunk_rows), bool(cross))
        return gram_pass_torch(xs, shift, chunk_rows, cross)


def gram_pass_groups(xs: list[torch.Tensor], shift: torch.Tensor, group_sizes: list[int],
                     chunk_rows: int = DEFAULT_CHUNK_ROWS, dtype: torch.dtype | None = None,
                     use_kernel: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``gram_pass`` with the cross blocks taken within groups of consecutive inputs only: e.g.
    ``xs = [x1, y1, x2, y2]``, ``group_sizes = [2, 2]`` gives both pairs' (x_i, y_i) Grams in one
    sweep (the batched many-pairs path: on CUDA one strided-batched GEMM per pair and step), and
    zeros between the pairs. All inputs need the same n (rows) and device."""
    if sum(group_sizes) != len(xs) or any(g < 1 for g in group_sizes):
        raise ValueError(f"group_sizes {group_sizes} must be >= 1 and add up to {len(xs)} inputs")
    dev, shift = _pass_shift(xs, shift, dtype)
    if use_kernel is None:
        use_kernel = dispatch.has_kernel("gram_pass_groups", dev)
    with _full_float32_matmul():
        if use_kernel:
            return torch.ops.transfusion.gram_pass_groups(list(xs), shift, int(chunk_rows),
                                                          [int(g) for g in group_sizes])
        widths = [x.shape[1] for x in xs]
        total = sum(widths)
        gram = torch.zeros(total, total, dtype=torch.float64, device=dev)
        colsum = torch.zeros(total, dtype=torch.float64, device=dev)
        chunk_sq = torch.zeros(n_chunks(xs[0].shape[0], chunk_rows), total, dtype=torch.float64,
                               device=dev)
        first, col = 0, 0
        for size in group_sizes:
            w = sum(widths[first:first + size])
            g, s, q = gram_pass_torch(xs[first:first + size], shift[col:col + w], chunk_rows)
            gram[col:col + w, col:col + w] = g
            colsum[col:col + w] = s
            chunk_sq[:, col:col + w] = q
            first, col = first + size, col + w
        return gram, colsum, chunk_sq


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
        chunks = n_chunks(xs[0].shape[0], chunk_rows)
        return (xs[0].new_empty((total, total), dtype=torch.float64),
                xs[0].new_empty((total,), dtype=torch.float64),
                xs[0].new_empty((chunks, total), dtype=torch.float64))

    try:
        torch.ops.transfusion.gram_pass_groups  # noqa: B018
    except (AttributeError, RuntimeError):
        return

    @torch.library.register_fake("transfusion::gram_pass_groups")
    def _fake_groups(xs, shift, chunk_rows, group_sizes):
        return _fake(xs, shift, chunk_rows, True)


_register()
