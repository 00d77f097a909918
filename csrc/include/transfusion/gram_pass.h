#pragma once
// The hot pass of (SV)CCA and CKA: one sweep over the datapoints of several activation matrices
// x_i (n, w_i) that accumulates, in float64,
//   colsum[W]    = sum_r (x[r] - shift)                (W = sum_i w_i, the concatenated widths)
//   gram[W, W]   = sum_r (x[r] - shift)^T (x[r] - shift)
//   chunk_sq[C, W] = per chunk c of rows: sum_{r in c} (x[r] - shift)^2 (C = ceil(n / chunk_rows)),
//                  summed in float64 from the compute-dtype values (exact squares), and gram's
//                  diagonal is their total: sums of squares are where a float32 GEMM's rounding
//                  leans one way. The rounding model of transfusion/ops/precision.py bounds the
//                  off-diagonal entries' error chunk by chunk by these norms, whatever the BLAS's
//                  summation order.
// (every block i <= j when `cross`, else only the diagonal blocks i == j; lower blocks mirrored).
//
// Scheme (shared by the CPU and CUDA ops; only `centre` differs):
//   rows are taken `chunk_rows` at a time; `centre` writes (x - shift) in the compute dtype
//   (the shift's dtype: float32, or float64 for exact products; float64 inputs need float64) into a reused
//   buffer and adds the buffer's column sums into colsum (float64); then every needed block
//   buf_i^T buf_j is one ATen GEMM (MKL / cuBLAS) in the compute dtype, added into the float64
//   gram. Shifting by an estimate of the mean (the caller passes the first chunk's mean) keeps the
//   float32 products small, so the float32 rounding stays far below the 1e-6 target; the float64
//   accumulation across chunks keeps the error from growing with n.
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace transfusion {

// centre(x_rows (rows, w) with stride(1) == 1, shift (w,) compute dtype contiguous,
//        out (rows, w) compute dtype contiguous, colsum (w,) float64 with stride 1)
using CentreFn = void (*)(const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_pass_impl(at::TensorList xs, const at::Tensor& shift,
                                                         int64_t chunk_rows, bool cross,
                                                         CentreFn centre, const char* name) {
  TORCH_CHECK(!xs.empty(), name, ": needs at least one activation matrix");
  const int64_t n = xs[0].size(0);
  bool any_double = false;
  std::vector<int64_t> offsets;
  int64_t total_width = 0;
  for (const auto& x : xs) {
    TORCH_CHECK(x.dim() == 2, name, ": every activation matrix must be 2-D (n, w), got ", x.dim(),
                " dims");
    TORCH_CHECK(x.size(0) == n, name, ": all matrices need the same number of rows (datapoints): ",
                x.size(0), " vs ", n);
    TORCH_CHECK(x.device() == xs[0].device(), name, ": all matrices must be on one device");
    TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, ": floating-point input expected, got ",
                x.scalar_type());
    any_double = any_double || x.scalar_type() == at::kDouble;
    offsets.push_back(total_width);
    total_width += x.size(1);
  }
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == total_width, name,
              ": shift must be 1-D with the summed width ", total_width);
  TORCH_CHECK(shift.device() == xs[0].device(), name, ": shift must be on the inputs' device");
  const auto f64 = xs[0].options().dtype(at::kDouble);
  at::Tensor gram = at::zeros({total_width, total_width}, f64);
  at::Tensor colsum = at::zeros({total_width}, f64);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(chunk_rows, n));
  const int64_t n_chunks = n == 0 ? 0 : (n + chunk - 1) / chunk;
  at::Tensor chunk_sq = at::zeros({n_chunks, total_width}, f64);
  if (n == 0 || total_width == 0) return {gram, colsum, chunk_sq};

  // The shift's dtype is the compute dtype: float32 (fast) or float64 (exact products).
  const auto compute = shift.scalar_type();
  TORCH_CHECK(compute == at::kFloat || compute == at::kDouble, name,
              ": shift must be float32 or float64 (it selects the GEMM dtype), got ", compute);
  TORCH_CHECK(!(any_double && compute == at::kFloat), name,
              ": float64 input needs a float64 shift (no silent downcast)");
  const at::Tensor shift_c = shift.contiguous();
  const size_t k = xs.size();
  std::vector<at::Tensor> bufs;
  for (size_t i = 0; i < k; ++i) bufs.push_back(at::empty({chunk, xs[i].size(1)}, xs[0].options().dtype(compute)));
  // One reusable product per needed block (i <= j).
  std::vector<std::vector<at::Tensor>> prods(k, std::vector<at::Tensor>(k));
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = i; j < k; ++j) {
      if (j != i && !cross) continue;
      prods[i][j] = at::empty({xs[i].size(1), xs[j].size(1)}, xs[0].options().dtype(compute));
    }
  }
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    std::vector<at::Tensor> views(k);
    for (size_t i = 0; i < k; ++i) {
      const int64_t w = xs[i].size(1);
      if (w == 0) continue;
      at::Tensor x_rows = xs[i].narrow(0, r0, rows);
      if (x_rows.stride(1) != 1) x_rows = x_rows.contiguous();
      views[i] = bufs[i].narrow(0, 0, rows);
      at::Tensor cs = colsum.narrow(0, offsets[i], w);
      centre(x_rows, shift_c.narrow(0, offsets[i], w), views[i], cs);
      // Squares of the compute-dtype values are exact in float64, and so (to float64 rounding) is
      // their float64 sum: the Gram's diagonal is taken from these, not from the GEMM.
      chunk_sq.select(0, r0 / chunk).narrow(0, offsets[i], w)
          .copy_(at::sum(at::square(views[i].to(at::kDouble)), {0}));
    }
    for (size_t i = 0; i < k; ++i) {
      for (size_t j = i; j < k; ++j) {
        if ((j != i && !cross) || xs[i].size(1) == 0 || xs[j].size(1) == 0) continue;
        at::mm_out(prods[i][j], views[i].t(), views[j]);
        gram.narrow(0, offsets[i], xs[i].size(1)).narrow(1, offsets[j], xs[j].size(1)).add_(prods[i][j]);
      }
    }
  }
  gram.diagonal().copy_(chunk_sq.sum(0));
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = i + 1; j < k && cross; ++j) {
      gram.narrow(0, offsets[j], xs[j].size(1)).narrow(1, offsets[i], xs[i].size(1))
          .copy_(gram.narrow(0, offsets[i], xs[i].size(1)).narrow(1, offsets[j], xs[j].size(1)).t());
    }
  }
  return {gram, colsum, chunk_sq};
}

}  // namespace transfusion
