// out = x - shift (in the compute dtype), colsum += column sums of out and sq = column sums of
// out^2 (both float64, from the compute-dtype values: the squares are exact), one pass over a chunk
// of rows. out may be a column slice of a wider buffer (row stride >= width). Compiled once per
// CPU capability; the inner loop is plain C++ that the compiler vectorises for the capability's
// ISA (conversion, subtract, store, widen-and-add, widen-square-and-add).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>

namespace transfusion::cpu::CPU_CAPABILITY {

namespace {

constexpr int64_t kColumnBlock = 64;

template <typename In, typename Out>
void centre_rows(const In* x, int64_t x_stride, const Out* shift, Out* out, int64_t out_stride,
                 double* colsum, double* sq, int64_t rows, int64_t width) {
  const int64_t blocks = (width + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t c0 = b * kColumnBlock;
      const int64_t cw = std::min(kColumnBlock, width - c0);
      std::array<double, kColumnBlock> acc{};
      std::array<double, kColumnBlock> acc2{};
      const Out* s = shift + c0;
      for (int64_t r = 0; r < rows; ++r) {
        const In* xr = x + r * x_stride + c0;
        Out* o = out + r * out_stride + c0;
        for (int64_t c = 0; c < cw; ++c) {
          const Out v = static_cast<Out>(xr[c]) - s[c];
          o[c] = v;
          const double d = static_cast<double>(v);
          acc[c] += d;
          acc2[c] += d * d;
        }
      }
      for (int64_t c = 0; c < cw; ++c) {
        colsum[c0 + c] += acc[c];
        sq[c0 + c] = acc2[c];
      }
    }
  });
}

}  // namespace

void centre_chunk_kernel(const at::Tensor& x, const at::Tensor& shift, at::Tensor& out,
                         at::Tensor& colsum, at::Tensor& sq) {
  const int64_t rows = x.size(0), width = x.size(1);
  TORCH_CHECK(x.stride(1) == 1 && out.stride(1) == 1 && out.size(0) == rows &&
                  out.size(1) == width && shift.is_contiguous() && colsum.stride(0) == 1 &&
                  colsum.scalar_type() == at::kDouble && sq.stride(0) == 1 &&
                  sq.scalar_type() == at::kDouble,
              "centre_chunk_kernel: layout precondition violated");
  double* cs = colsum.mutable_data_ptr<double>();
  double* s2 = sq.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "centre_chunk", [&] {
    using in_t = scalar_t;
    const in_t* xp = x.const_data_ptr<in_t>();
    if (out.scalar_type() == at::kDouble) {
      centre_rows<in_t, double>(xp, x.stride(0), shift.const_data_ptr<double>(),
                                out.mutable_data_ptr<double>(), out.stride(0), cs, s2, rows, width);
    } else {
      TORCH_CHECK(out.scalar_type() == at::kFloat, "centre_chunk_kernel: float32/64 buffer expected");
      centre_rows<in_t, float>(xp, x.stride(0), shift.const_data_ptr<float>(),
                               out.mutable_data_ptr<float>(), out.stride(0), cs, s2, rows, width);
    }
  });
}

}  // namespace transfusion::cpu::CPU_CAPABILITY
