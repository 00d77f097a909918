// out = x - shift (in the compute dtype) and colsum += column sums of out (float64), one pass over
// a chunk of rows. Compiled once per CPU capability; the inner loop is plain C++ that the compiler
// vectorises for the capability's ISA (conversion, subtract, store, widen-and-add).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>

namespace transfusion::cpu::CPU_CAPABILITY {

namespace {

constexpr int64_t kColumnBlock = 64;

template <typename In, typename Out>
void centre_rows(const In* x, int64_t x_stride, const Out* shift, Out* out, double* colsum,
                 int64_t rows, int64_t width) {
  const int64_t blocks = (width + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t c0 = b * kColumnBlock;
      const int64_t cw = std::min(kColumnBlock, width - c0);
      std::array<double, kColumnBlock> acc{};
      const Out* s = shift + c0;
      for (int64_t r = 0; r < rows; ++r) {
        const In* xr = x + r * x_stride + c0;
        Out* o = out + r * width + c0;
        for (int64_t c = 0; c < cw; ++c) {
          const Out v = static_cast<Out>(xr[c]) - s[c];
          o[c] = v;
          acc[c] += static_cast<double>(v);
        }
      }
      for (int64_t c = 0; c < cw; ++c) colsum[c0 + c] += acc[c];
    }
  });
}

}  // namespace

void centre_chunk_kernel(const at::Tensor& x, const at::Tensor& shift, at::Tensor& out,
                         at::Tensor& colsum) {
  const int64_t rows = x.size(0), width = x.size(1);
  TORCH_CHECK(x.stride(1) == 1 && out.is_contiguous() && shift.is_contiguous() &&
                  colsum.stride(0) == 1 && colsum.scalar_type() == at::kDouble,
              "centre_chunk_kernel: layout precondition violated");
  double* cs = colsum.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "centre_chunk", [&] {
    using in_t = scalar_t;
    const in_t* xp = x.const_data_ptr<in_t>();
    if (out.scalar_type() == at::kDouble) {
      centre_rows<in_t, double>(xp, x.stride(0), shift.const_data_ptr<double>(),
                                out.mutable_data_ptr<double>(), cs, rows, width);
    } else {
      TORCH_CHECK(out.scalar_type() == at::kFloat, "centre_chunk_kernel: float32/64 buffer expected");
      centre_rows<in_t, float>(xp, x.stride(0), shift.const_data_ptr<float>(),
                               out.mutable_data_ptr<float>(), cs, rows, width);
    }
  });
}

}  // namespace transfusion::cpu::CPU_CAPABILITY
