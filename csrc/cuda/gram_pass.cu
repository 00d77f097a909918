// CUDA implementation of transfusion::gram_pass / gram_pass_groups (see transfusion/gram_pass.h).
// Several chunks are processed per step: one fused kernel per input writes x - shift (compute
// dtype) into one (step rows, W) buffer and the per-chunk float64 column sums and sums of squares
// (partial per row segment, summed with ATen: deterministic), then per column group ONE strided-
// batched cuBLAS GEMM (at::bmm_out; no cuBLAS header is needed here) forms every chunk's Gram
// (batch entry = chunk, so each float32 sum still runs over one chunk's rows, as the rounding
// model assumes), summed over the batch into the float64 gram.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "transfusion/gram_pass.h"

namespace transfusion::cuda {
namespace {

constexpr int kThreads = 128;       // columns per block
constexpr int64_t kSegmentRows = 128;  // rows per thread when it divides the chunk length
// Step size: at most this many elements in the step's product (g, W, W) and buffer (g K, W).
constexpr int64_t kStepElements = int64_t{1} << 26;

// blockIdx.x: column block, blockIdx.y: row segment of the step. Writes out[r, c] = x[r, c] -
// shift[c] and, per segment, the float64 sum and sum of squares of the written values.
template <typename In, typename Out>
__global__ void centre_stats_kernel(const In* __restrict__ x, int64_t x_stride,
                                    const Out* __restrict__ shift, Out* __restrict__ out,
                                    int64_t out_stride, int64_t rows, int64_t width,
                                    int64_t segment_rows, double* __restrict__ seg_sum,
                                    double* __restrict__ seg_sq, int64_t seg_stride) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  const int64_t r0 = blockIdx.y * segment_rows;
  const int64_t r1 = r0 + segment_rows < rows ? r0 + segment_rows : rows;
  const Out s = shift[c];
  double acc = 0.0, acc2 = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const Out v = static_cast<Out>(x[r * x_stride + c]) - s;
    out[r * out_stride + c] = v;
    const double d = static_cast<double>(v);
    acc += d;
    acc2 += d * d;
  }
  seg_sum[blockIdx.y * seg_stride + c] = acc;
  seg_sq[blockIdx.y * seg_stride + c] = acc2;
}

void centre_stats(const at::Tensor& x, const at::Tensor& shift, at::Tensor& out, int64_t offset,
                  int64_t segment_rows, at::Tensor& seg_sum, at::Tensor& seg_sq) {
  const int64_t rows = x.size(0), width = x.size(1);
  if (rows == 0 || width == 0) return;
  const int64_t segments = (rows + segment_rows - 1) / segment_rows;
  TORCH_CHECK(segments <= seg_sum.size(0) && segments < 65536, "gram_pass (CUDA): step too long");
  const dim3 grid(static_cast<unsigned>((width + kThreads - 1) / kThreads),
                  static_cast<unsigned>(segments));
  auto stream = c10::cuda::getCurrentCUDAStream();
  double* ss = seg_sum.mutable_data_ptr<double>() + offset;
  double* sq = seg_sq.mutable_data_ptr<double>() + offset;
  const int64_t seg_stride = seg_sum.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "centre_stats_cuda", [&] {
    using in_t = scalar_t;
    if (out.scalar_type() == at::kDouble) {
      centre_stats_kernel<in_t, double><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<in_t>(), x.stride(0), shift.const_data_ptr<double>(),
          out.mutable_data_ptr<double>(), out.stride(0), rows, width, segment_rows, ss, sq,
          seg_stride);
    } else {
      centre_stats_kernel<in_t, float><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<in_t>(), x.stride(0), shift.const_data_ptr<float>(),
          out.mutable_data_ptr<float>(), out.stride(0), rows, width, segment_rows, ss, sq,
          seg_stride);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_pass_groups(at::TensorList xs,
                                                                const at::Tensor& shift,
                                                                int64_t chunk_rows,
                                                                at::IntArrayRef group_sizes) {
  TORCH_CHECK(!xs.empty(), "gram_pass (CUDA): needs at least one activation matrix");
  c10::cuda::CUDAGuard guard(xs[0].device());
  const GramPassPlan p = plan_gram_pass(xs, shift, chunk_rows, group_sizes, "gram_pass (CUDA)");
  const auto f64 = xs[0].options().dtype(at::kDouble);
  at::Tensor gram = at::zeros({p.width, p.width}, f64);
  at::Tensor colsum = at::zeros({p.width}, f64);
  at::Tensor chunk_sq = at::zeros({p.n_chunks, p.width}, f64);
  if (p.n == 0 || p.width == 0) return {gram, colsum, chunk_sq};

  int64_t widest = 0;
  for (const auto& [b, e] : p.groups) widest = std::max(widest, e - b);
  const int64_t per_chunk = std::max<int64_t>({widest * widest, p.chunk * p.width, int64_t{1}});
  const int64_t full_chunks = p.n / p.chunk;  // chunks of exactly p.chunk rows
  // segments of a thread's rows never straddle two chunks
  const int64_t segment_rows = p.chunk % kSegmentRows == 0 ? kSegmentRows : p.chunk;
  const int64_t segments_per_chunk = p.chunk / segment_rows;
  const int64_t step_chunks = std::max<int64_t>(
      1, std::min<int64_t>({kStepElements / per_chunk, std::max<int64_t>(full_chunks, 1),
                            65535 / segments_per_chunk}));
  const auto opts = xs[0].options().dtype(p.compute);
  const at::Tensor shift_c = shift.contiguous();
  at::Tensor z = at::empty({step_chunks * p.chunk, p.width}, opts);
  const int64_t max_segments = step_chunks * segments_per_chunk;
  at::Tensor seg_sum = at::empty({max_segments, p.width}, f64);
  at::Tensor seg_sq = at::empty({max_segments, p.width}, f64);
  std::vector<at::Tensor> prods;
  for (const auto& [b, e] : p.groups) prods.push_back(at::empty({step_chunks, e - b, e - b}, opts));

  int64_t c0 = 0;  // first chunk of the step
  while (c0 < p.n_chunks) {
    // a step of g whole chunks, or the last (shorter) chunk alone
    const int64_t g = c0 < full_chunks ? std::min(step_chunks, full_chunks - c0) : 1;
    const int64_t r0 = c0 * p.chunk;
    const int64_t rows = c0 < full_chunks ? g * p.chunk : p.n - r0;
    const int64_t rows_per_chunk = c0 < full_chunks ? p.chunk : rows;
    at::Tensor zs = z.narrow(0, 0, rows);
    for (size_t i = 0; i < xs.size(); ++i) {
      const int64_t o = p.offsets[i], w = p.widths[i];
      if (w == 0) continue;
      at::Tensor out = zs.narrow(1, o, w);
      centre_stats(input_rows(xs[i], r0, rows), shift_c.narrow(0, o, w), out, o, segment_rows,
                   seg_sum, seg_sq);
    }
    // g whole chunks of segments_per_chunk segments each, or the last chunk alone
    const int64_t segments = (rows + segment_rows - 1) / segment_rows;
    colsum.add_(seg_sum.narrow(0, 0, segments).sum(0));
    chunk_sq.narrow(0, c0, g).copy_(
        seg_sq.narrow(0, 0, segments).view({g, segments / g, p.width}).sum(1));
    at::Tensor zc = zs.view({g, rows_per_chunk, p.width});
    for (size_t k = 0; k < p.groups.size(); ++k) {
      const auto [b, e] = p.groups[k];
      at::Tensor zg = zc.narrow(2, b, e - b);
      at::Tensor prod = prods[k].narrow(0, 0, g);
      at::bmm_out(prod, zg.transpose(1, 2), zg);
      gram.narrow(0, b, e - b).narrow(1, b, e - b).add_(at::sum(prod, {0}, false, at::kDouble));
    }
    c0 += g;
  }
  finish_gram(gram, chunk_sq, p);
  return {gram, colsum, chunk_sq};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_pass(at::TensorList xs, const at::Tensor& shift,
                                                         int64_t chunk_rows, bool cross) {
  return gram_pass_groups(xs, shift, chunk_rows, cross_groups(xs.size(), cross));
}

}  // namespace
}  // namespace transfusion::cuda

TORCH_LIBRARY_IMPL(transfusion, CUDA, m) {
  m.impl("gram_pass", &transfusion::cuda::gram_pass);
  m.impl("gram_pass_groups", &transfusion::cuda::gram_pass_groups);
}
