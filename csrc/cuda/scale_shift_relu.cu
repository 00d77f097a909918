// CUDA implementation of transfusion::scale_shift_relu (contiguous NC* and channels_last); checks
// and the layout test in include/transfusion/checks.h, shared with the CPU op.
// Only c10/cuda and ATen core headers: the compile check runs where no cuBLAS/cuSPARSE headers exist.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "transfusion/checks.h"

namespace transfusion::cuda {
namespace {

template <typename T, typename Acc>
__global__ void scale_shift_relu_nchw(const T* __restrict__ x, const T* __restrict__ scale,
                                      const T* __restrict__ shift, T* __restrict__ y,
                                      int64_t total, int64_t c, int64_t plane) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += stride) {
    const int64_t ch = (i / plane) % c;
    const Acc v = static_cast<Acc>(x[i]) * static_cast<Acc>(scale[ch]) + static_cast<Acc>(shift[ch]);
    y[i] = static_cast<T>(v > Acc(0) ? v : Acc(0));
  }
}

template <typename T, typename Acc>
__global__ void scale_shift_relu_nhwc(const T* __restrict__ x, const T* __restrict__ scale,
                                      const T* __restrict__ shift, T* __restrict__ y,
                                      int64_t total, int64_t c) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += stride) {
    const int64_t ch = i % c;
    const Acc v = static_cast<Acc>(x[i]) * static_cast<Acc>(scale[ch]) + static_cast<Acc>(shift[ch]);
    y[i] = static_cast<T>(v > Acc(0) ? v : Acc(0));
  }
}

at::Tensor scale_shift_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  check_scale_shift_relu_inputs(x, scale, shift);
  const int64_t c = x.size(1);
  c10::cuda::CUDAGuard guard(x.device());
  const bool channels_last = is_channels_last(x);
  const at::Tensor xc = channels_last ? x : x.contiguous();
  at::Tensor y = at::empty_like(xc, memory_format(channels_last));
  const int64_t total = xc.numel();
  if (total == 0) return y;
  const int64_t plane = total / (x.size(0) * c);
  const int threads = 256;
  const int64_t blocks64 = std::min<int64_t>((total + threads - 1) / threads, 65535LL * 8);
  const int blocks = static_cast<int>(blocks64);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor s = scale.contiguous(), b = shift.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_shift_relu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (channels_last) {
      scale_shift_relu_nhwc<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
          xc.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          y.mutable_data_ptr<scalar_t>(), total, c);
    } else {
      scale_shift_relu_nchw<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
          xc.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          y.mutable_data_ptr<scalar_t>(), total, c, plane);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace
}  // namespace transfusion::cuda

TORCH_LIBRARY_IMPL(transfusion, CUDA, m) {
  m.impl("scale_shift_relu", &transfusion::cuda::scale_shift_relu);
}
