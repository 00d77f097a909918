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
// (every block i <= j when `cross`, else only the diagonal blocks i == j; lower blocks mirrored;
// gram_pass_groups: the blocks i <= j of inputs in one group, e.g. the pairs of a batched call).
//
// Scheme (the CPU and CUDA ops share the checks, the plan and the finish; the loops differ):
//   rows are taken `chunk_rows` at a time; each input's rows are written shifted, in the compute
//   dtype (the shift's dtype: float32, or float64 for exact products; float64 inputs need float64),
//   into the columns of ONE (chunk, W) buffer z, and the same pass adds the column sums into
//   colsum and the squares into chunk_sq (float64). Then z^T z is formed by GEMMs in the compute
//   dtype whose sums run over that chunk's rows only (the rounding model's K), each added into
//   the float64 gram:
//     * CPU: only the upper triangle, as block rows z[:, i:i+B]^T z[:, i:] (B = kGramBlock columns;
//       36/64 of the full product's flops at W = 1024, vs 48/64 for the x^T x, y^T y, x^T y
//       blocks); the threads take contiguous ranges of chunks with single-threaded GEMMs and
//       their own float64 accumulators, added in thread order at the end;
//     * CUDA: several chunks at once in one strided-batched cuBLAS GEMM (each batch entry one
//       chunk, so the float32 sums still run over one chunk), summed over the batch in float64.
//   Shifting by an estimate of the mean (the caller passes the first chunk's mean) keeps the
//   float32 products small; the float64 accumulation across chunks keeps the error from growing
//   with n. Memory: O(chunk W + W^2), independent of n.
#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

namespace transfusion {

struct GramPassPlan {
  int64_t n = 0;
  int64_t chunk = 1;        // rows per chunk (the rounding model's K; the last chunk may be shorter)
  int64_t n_chunks = 0;
  int64_t width = 0;        // W
  std::vector<int64_t> offsets, widths;
  // column ranges [begin, end) whose Gram is needed: [0, W) when cross, else one per input
  std::vector<std::pair<int64_t, int64_t>> groups;
  at::ScalarType compute = at::kFloat;
};

// group_sizes: consecutive inputs whose cross blocks are needed ({k} = all of them, the `cross`
// pass; {1, .., 1} = each input alone; {2, 2, ..} = pairs, the batched many-pairs pass).
inline GramPassPlan plan_gram_pass(at::TensorList xs, const at::Tensor& shift, int64_t chunk_rows,
                                   c10::IntArrayRef group_sizes, const char* name) {
  TORCH_CHECK(!xs.empty(), name, ": needs at least one activation matrix");
  GramPassPlan p;
  p.n = xs[0].size(0);
  bool any_double = false;
  for (const auto& x : xs) {
    TORCH_CHECK(x.dim() == 2, name, ": every activation matrix must be 2-D (n, w), got ", x.dim(),
                " dims");
    TORCH_CHECK(x.size(0) == p.n, name, ": all matrices need the same number of rows (datapoints): ",
                x.size(0), " vs ", p.n);
    TORCH_CHECK(x.device() == xs[0].device(), name, ": all matrices must be on one device");
    TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, ": floating-point input expected, got ",
                x.scalar_type());
    any_double = any_double || x.scalar_type() == at::kDouble;
    p.offsets.push_back(p.width);
    p.widths.push_back(x.size(1));
    p.width += x.size(1);
  }
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == p.width, name,
              ": shift must be 1-D with the summed width ", p.width);
  TORCH_CHECK(shift.device() == xs[0].device(), name, ": shift must be on the inputs' device");
  p.chunk = std::max<int64_t>(1, std::min<int64_t>(chunk_rows, p.n));
  p.n_chunks = p.n == 0 ? 0 : (p.n + p.chunk - 1) / p.chunk;
  // The shift's dtype is the compute dtype: float32 (fast) or float64 (exact products).
  p.compute = shift.scalar_type();
  TORCH_CHECK(p.compute == at::kFloat || p.compute == at::kDouble, name,
              ": shift must be float32 or float64 (it selects the GEMM dtype), got ", p.compute);
  TORCH_CHECK(!(any_double && p.compute == at::kFloat), name,
              ": float64 input needs a float64 shift (no silent downcast)");
  int64_t first = 0;
  for (const int64_t size : group_sizes) {
    TORCH_CHECK(size >= 1 && first + size <= static_cast<int64_t>(xs.size()), name,
                ": group sizes must be >= 1 and add up to the number of inputs");
    const int64_t b = p.offsets[first], e = p.offsets[first + size - 1] + p.widths[first + size - 1];
    if (e > b) p.groups.emplace_back(b, e);
    first += size;
  }
  TORCH_CHECK(first == static_cast<int64_t>(xs.size()), name,
              ": group sizes must add up to the number of inputs (", xs.size(), "), got ", first);
  return p;
}

// The group sizes of the two-flag form: one group of all inputs when cross, else one per input.
inline std::vector<int64_t> cross_groups(size_t inputs, bool cross) {
  return cross ? std::vector<int64_t>{static_cast<int64_t>(inputs)}
               : std::vector<int64_t>(inputs, int64_t{1});
}

// The rows [r0, r0 + rows) of x_i with unit column stride (a copy only for column-strided input).
inline at::Tensor input_rows(const at::Tensor& x, int64_t r0, int64_t rows) {
  at::Tensor x_rows = x.narrow(0, r0, rows);
  return x_rows.stride(1) == 1 ? x_rows : x_rows.contiguous();
}

// gram's diagonal from the exact float64 squares, and each group's lower triangle mirrored from
// its upper one (the GEMMs filled the upper triangle; entries below it may hold partial sums).
// Block by block, so the temporaries are kMirrorBlock^2: mirroring the whole group at once
// (triu + transpose + add) took three W x W float64 temporaries, 24 MiB at W = 1024, the largest
// part of the streamed statistics' peak memory (bench_svcca.py::test_streaming_memory).
inline void finish_gram(at::Tensor& gram, const at::Tensor& chunk_sq, const GramPassPlan& p) {
  constexpr int64_t kMirrorBlock = 256;
  for (const auto& [b, e] : p.groups) {
    for (int64_t i = b; i < e; i += kMirrorBlock) {
      const int64_t r = std::min(kMirrorBlock, e - i);
      at::Tensor diag = gram.narrow(0, i, r).narrow(1, i, r);
      diag.copy_(at::triu(diag) + at::triu(diag, 1).t());
      if (i + r < e) {  // below this diagonal block: the transpose of the block row to its right
        gram.narrow(0, i + r, e - i - r).narrow(1, i, r)
            .copy_(gram.narrow(0, i, r).narrow(1, i + r, e - i - r).t());
      }
    }
  }
  if (p.n_chunks > 0) gram.diagonal().copy_(chunk_sq.sum(0));
}

}  // namespace transfusion
