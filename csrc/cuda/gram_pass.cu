// CUDA implementation of transfusion::gram_pass (see transfusion/gram_pass.h): the same chunk loop
// with cuBLAS GEMMs reached through ATen (at::mm_out; no cuBLAS header here), a centre kernel that
// writes x - shift in the compute dtype, and the column sums through at::sum in float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "transfusion/gram_pass.h"

namespace transfusion::cuda {
namespace {

template <typename In, typename Out>
__global__ void centre_kernel(const In* __restrict__ x, int64_t x_stride,
                              const Out* __restrict__ shift, Out* __restrict__ out, int64_t rows,
                              int64_t width) {
  const int64_t total = rows * width;
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += step) {
    const int64_t r = i / width, c = i % width;
    out[i] = static_cast<Out>(x[r * x_stride + c]) - shift[c];
  }
}

void centre(const at::Tensor& x, const at::Tensor& shift, at::Tensor& out, at::Tensor& colsum) {
  const int64_t rows = x.size(0), width = x.size(1);
  const int64_t total = rows * width;
  if (total == 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65535LL * 8));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "centre_chunk_cuda", [&] {
    using in_t = scalar_t;
    if (out.scalar_type() == at::kDouble) {
      centre_kernel<in_t, double><<<blocks, threads, 0, stream>>>(
          x.const_data_ptr<in_t>(), x.stride(0), shift.const_data_ptr<double>(),
          out.mutable_data_ptr<double>(), rows, width);
    } else {
      centre_kernel<in_t, float><<<blocks, threads, 0, stream>>>(
          x.const_data_ptr<in_t>(), x.stride(0), shift.const_data_ptr<float>(),
          out.mutable_data_ptr<float>(), rows, width);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  colsum.add_(at::sum(out, {0}, false, at::kDouble));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_pass(at::TensorList xs, const at::Tensor& shift,
                                             int64_t chunk_rows, bool cross) {
  TORCH_CHECK(!xs.empty(), "gram_pass (CUDA): needs at least one activation matrix");
  c10::cuda::CUDAGuard guard(xs[0].device());
  return gram_pass_impl(xs, shift, chunk_rows, cross, &centre, "gram_pass (CUDA)");
}

}  // namespace
}  // namespace transfusion::cuda

TORCH_LIBRARY_IMPL(transfusion, CUDA, m) {
  m.impl("gram_pass", &transfusion::cuda::gram_pass);
}
