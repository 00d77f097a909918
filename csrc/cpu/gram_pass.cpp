// CPU implementation of transfusion::gram_pass (see transfusion/gram_pass.h): per chunk, the fused
// centre + convert + column-sum + square-sum kernel (compiled per CPU capability) writes the chunk
// into one buffer, then the upper triangle of its Gram is formed by block-row GEMMs (MKL through
// ATen). The threads take contiguous ranges of chunks (single-threaded GEMMs, no barrier per chunk).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "transfusion/cpu_dispatch.h"
#include "transfusion/gram_pass.h"

// MKL's per-thread thread count (the C entry point; the lower-case names take Fortran pointers) (exported by the libtorch_cpu that links MKL statically; weak, so a
// build against a torch without MKL links and skips it). torch turns MKL's dynamic adjustment off,
// so without this a GEMM inside a parallel region would start its own nested threads.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

TRANSFUSION_DECLARE_CPU_KERNEL(void, centre_chunk_kernel, const at::Tensor& x,
                               const at::Tensor& shift, at::Tensor& out, at::Tensor& colsum,
                               at::Tensor& sq)

namespace transfusion::cpu {
namespace {

// Columns per block row. Measured (2-core AMD EPYC, MKL, one thread, 1024-row chunks, W = 1024,
// CPU time, min of 5): full z^T z 1.00, x^T x + y^T y + x^T y 0.78, block rows of 512 0.76,
// 256 0.66, 128 0.63; MKL's ssyrk 0.66 (it is not reachable through ATen anyway).
constexpr int64_t kGramBlock = 128;

struct BlockRow {
  int64_t begin, rows, end;  // gram[begin:begin+rows, begin:end] += z[:, begin:begin+rows]^T z[:, begin:end]
  int64_t work() const { return rows * (end - begin); }
};

std::vector<BlockRow> block_rows(const GramPassPlan& p) {
  std::vector<BlockRow> out;
  for (const auto& [b, e] : p.groups) {
    for (int64_t i = b; i < e; i += kGramBlock) out.push_back({i, std::min(kGramBlock, e - i), e});
  }
  return out;
}

void centre(const at::Tensor& x, const at::Tensor& shift, at::Tensor& out, at::Tensor& colsum,
            at::Tensor& sq) {
  TRANSFUSION_CPU_KERNEL(centre_chunk_kernel)(x, shift, out, colsum, sq);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_pass_groups(at::TensorList xs,
                                                                const at::Tensor& shift,
                                                                int64_t chunk_rows,
                                                                at::IntArrayRef group_sizes) {
  const GramPassPlan p = plan_gram_pass(xs, shift, chunk_rows, group_sizes, "gram_pass (CPU)");
  const auto f64 = xs[0].options().dtype(at::kDouble);
  at::Tensor gram = at::zeros({p.width, p.width}, f64);
  at::Tensor colsum = at::zeros({p.width}, f64);
  at::Tensor chunk_sq = at::zeros({p.n_chunks, p.width}, f64);
  if (p.n == 0 || p.width == 0) return {gram, colsum, chunk_sq};

  const at::Tensor shift_c = shift.contiguous();
  const auto opts = xs[0].options().dtype(p.compute);
  const std::vector<BlockRow> rows_of_gram = block_rows(p);
  // Threads take contiguous ranges of chunks, each with its own buffer and float64 accumulator
  // (no barrier per chunk: on a shared machine a barrier per chunk made the pass 3x slower than
  // one big GEMM while other jobs ran), reduced in thread order at the end (deterministic for a
  // thread count). Extra memory: (threads - 1) W^2 float64, capped at kAccumulatorBytes; where
  // that allows one thread only, the GEMMs use the BLAS's own threads instead.
  constexpr int64_t kAccumulatorBytes = int64_t{256} << 20;
  const int64_t per_acc = p.width * p.width * 8;
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), p.n_chunks,
                            1 + kAccumulatorBytes / std::max<int64_t>(per_acc, 1)}));
  // Every buffer is allocated here, on the calling thread: allocated inside the worker threads
  // they came from glibc's per-thread arenas, which keep freed memory resident (streamed 512 + 512
  // neurons on 2 threads: the process grew by ~16 MiB per update).
  std::vector<at::Tensor> grams{gram}, colsums{colsum}, zs;
  std::vector<std::vector<at::Tensor>> prods_of(static_cast<size_t>(threads));
  for (int64_t t = 0; t < threads; ++t) {
    if (t > 0) {
      grams.push_back(at::zeros_like(gram));
      colsums.push_back(at::zeros_like(colsum));
    }
    zs.push_back(at::empty({p.chunk, p.width}, opts));
    for (const auto& r : rows_of_gram) {
      prods_of[static_cast<size_t>(t)].push_back(at::empty({r.rows, r.end - r.begin}, opts));
    }
  }
  auto run_chunks = [&](int64_t t, int64_t c_begin, int64_t c_end) {
    at::Tensor& z = zs[static_cast<size_t>(t)];
    std::vector<at::Tensor>& prods = prods_of[static_cast<size_t>(t)];
    at::Tensor& g = grams[static_cast<size_t>(t)];
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t r0 = c * p.chunk;
      const int64_t rows = std::min(p.chunk, p.n - r0);
      at::Tensor zc = z.narrow(0, 0, rows);
      at::Tensor sq_row = chunk_sq.select(0, c);
      for (size_t i = 0; i < xs.size(); ++i) {
        const int64_t o = p.offsets[i], w = p.widths[i];
        if (w == 0) continue;
        at::Tensor out = zc.narrow(1, o, w);
        at::Tensor cs = colsums[static_cast<size_t>(t)].narrow(0, o, w);
        at::Tensor sq = sq_row.narrow(0, o, w);
        centre(input_rows(xs[i], r0, rows), shift_c.narrow(0, o, w), out, cs, sq);
      }
      for (size_t r = 0; r < rows_of_gram.size(); ++r) {
        const BlockRow& b = rows_of_gram[r];
        at::mm_out(prods[r], zc.narrow(1, b.begin, b.rows).t(), zc.narrow(1, b.begin, b.end - b.begin));
        g.narrow(0, b.begin, b.rows).narrow(1, b.begin, b.end - b.begin).add_(prods[r]);
      }
    }
  };
  if (threads == 1) {
    run_chunks(0, 0, p.n_chunks);  // outside a parallel region: MKL threads each GEMM itself
  } else {
    // inside the parallel region MKL (and the centre kernel) run on the calling thread
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      const int before = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
      for (int64_t t = begin; t < end; ++t) {
        run_chunks(t, p.n_chunks * t / threads, p.n_chunks * (t + 1) / threads);
      }
      if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(before);
    });
    for (int64_t t = 1; t < threads; ++t) {
      gram.add_(grams[static_cast<size_t>(t)]);
      colsum.add_(colsums[static_cast<size_t>(t)]);
    }
  }
  finish_gram(gram, chunk_sq, p);
  return {gram, colsum, chunk_sq};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_pass(at::TensorList xs, const at::Tensor& shift,
                                                         int64_t chunk_rows, bool cross) {
  return gram_pass_groups(xs, shift, chunk_rows, cross_groups(xs.size(), cross));
}

}  // namespace
}  // namespace transfusion::cpu

TORCH_LIBRARY_IMPL(transfusion, CPU, m) {
  m.impl("gram_pass", &transfusion::cpu::gram_pass);
  m.impl("gram_pass_groups", &transfusion::cpu::gram_pass_groups);
}
