// CPU implementation of transfusion::gram_pass (see transfusion/gram_pass.h): per chunk, the fused
// centre + convert + column-sum + square-sum kernel (compiled per CPU capability) writes the chunk
// into one buffer, then the upper triangle of its Gram is formed by block-row GEMMs (MKL through
// ATen), one single-threaded GEMM per block row, the block rows shared out over the threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "transfusion/cpu_dispatch.h"
#include "transfusion/gram_pass.h"

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

// Block rows per thread, longest first to the least loaded thread (balanced within one block row).
std::vector<std::vector<size_t>> share_out(const std::vector<BlockRow>& rows, int64_t threads) {
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return rows[a].work() > rows[b].work(); });
  std::vector<std::vector<size_t>> per(static_cast<size_t>(threads));
  std::vector<int64_t> load(static_cast<size_t>(threads), 0);
  for (size_t r : order) {
    const auto t = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    per[t].push_back(r);
    load[t] += rows[r].work();
  }
  return per;
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
  at::Tensor z = at::empty({p.chunk, p.width}, opts);
  const std::vector<BlockRow> rows_of_gram = block_rows(p);
  std::vector<at::Tensor> prods;
  for (const auto& r : rows_of_gram) prods.push_back(at::empty({r.rows, r.end - r.begin}, opts));
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(rows_of_gram.size())));
  const auto per_thread = share_out(rows_of_gram, threads);

  auto block_product = [&](const at::Tensor& zc, size_t r) {
    const BlockRow& b = rows_of_gram[r];
    at::mm_out(prods[r], zc.narrow(1, b.begin, b.rows).t(), zc.narrow(1, b.begin, b.end - b.begin));
    gram.narrow(0, b.begin, b.rows).narrow(1, b.begin, b.end - b.begin).add_(prods[r]);
  };

  for (int64_t c = 0; c < p.n_chunks; ++c) {
    const int64_t r0 = c * p.chunk;
    const int64_t rows = std::min(p.chunk, p.n - r0);
    at::Tensor zc = z.narrow(0, 0, rows);
    at::Tensor sq_row = chunk_sq.select(0, c);
    for (size_t i = 0; i < xs.size(); ++i) {
      const int64_t o = p.offsets[i], w = p.widths[i];
      if (w == 0) continue;
      at::Tensor out = zc.narrow(1, o, w);
      at::Tensor cs = colsum.narrow(0, o, w);
      at::Tensor sq = sq_row.narrow(0, o, w);
      centre(input_rows(xs[i], r0, rows), shift_c.narrow(0, o, w), out, cs, sq);
    }
    if (threads == 1) {
      // one block row (narrow inputs) or one thread: the BLAS may use the threads itself
      for (size_t r = 0; r < rows_of_gram.size(); ++r) block_product(zc, r);
    } else {
      // inside the parallel region MKL runs each GEMM on the calling thread
      at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          for (size_t r : per_thread[static_cast<size_t>(t)]) block_product(zc, r);
        }
      });
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
