// CUDA implementation of the training-mode BatchNorm + ReLU ops (schemas in registration.cpp),
// for contiguous NC* and channels_last tensors, float64/float32/float16/bfloat16 (statistics and
// per-channel constants in float32 for the half types, float64 for float64).
//
//   stats:    grid (C, S): each block runs Welford over a strided slice of one channel, merges its
//             threads in shared memory and writes (count, mean, M2); a second kernel merges the S
//             partials of a channel (Chan's formula) into mean and biased variance.
//   backward: the same two-level reduction for sum(g [z>0]) and sum(g [z>0] (x - mean)), then one
//             elementwise pass grad_x = [z>0] g k + x p + q, with z = x * scale + shift recomputed
//             from x by bn_pre exactly as the forward computed y = max(z, 0) (y is not kept).
// Checks and the channels_last test: include/transfusion/checks.h, shared with the CPU ops.
// Only ATen core + c10/cuda headers (the compile check runs without cuBLAS/cuDNN headers).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "transfusion/bn_relu_math.h"
#include "transfusion/checks.h"

namespace transfusion::cuda {
namespace {

constexpr int kThreads = 256;

// Offset of the j-th element (j in [0, N*plane)) of channel ch.
__device__ __forceinline__ int64_t channel_offset(int64_t j, int64_t ch, int64_t c, int64_t plane,
                                                  bool channels_last) {
  if (channels_last) return j * c + ch;
  const int64_t n = j / plane;
  return (n * c + ch) * plane + (j - n * plane);
}

template <typename Acc>
__device__ __forceinline__ void welford_merge(Acc& mean, Acc& m2, Acc& count, Acc mean_b, Acc m2_b,
                                              Acc count_b) {
  if (count_b == Acc(0)) return;
  const Acc n = count + count_b;
  const Acc delta = mean_b - mean;
  mean += delta * (count_b / n);
  m2 += m2_b + delta * delta * (count * count_b / n);
  count = n;
}

// partial[(ch * splits + split) * 3 + {0,1,2}] = (count, mean, M2) of one block's slice.
template <typename T, typename Acc>
__global__ void stats_partial_kernel(const T* __restrict__ x, Acc* __restrict__ partial,
                                     int64_t m, int64_t c, int64_t plane, bool channels_last) {
  const int64_t ch = blockIdx.x;
  const int splits = gridDim.y;
  Acc mean = 0, m2 = 0, count = 0;
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < m;
       j += static_cast<int64_t>(splits) * blockDim.x) {
    const Acc v = static_cast<Acc>(x[channel_offset(j, ch, c, plane, channels_last)]);
    count += Acc(1);
    const Acc delta = v - mean;
    mean += delta / count;
    m2 += delta * (v - mean);
  }
  __shared__ Acc s_mean[kThreads], s_m2[kThreads], s_count[kThreads];
  s_mean[threadIdx.x] = mean;
  s_m2[threadIdx.x] = m2;
  s_count[threadIdx.x] = count;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      Acc a_mean = s_mean[threadIdx.x], a_m2 = s_m2[threadIdx.x], a_count = s_count[threadIdx.x];
      welford_merge(a_mean, a_m2, a_count, s_mean[threadIdx.x + half], s_m2[threadIdx.x + half],
                    s_count[threadIdx.x + half]);
      s_mean[threadIdx.x] = a_mean;
      s_m2[threadIdx.x] = a_m2;
      s_count[threadIdx.x] = a_count;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    Acc* out = partial + (ch * splits + blockIdx.y) * 3;
    out[0] = s_count[0];
    out[1] = s_mean[0];
    out[2] = s_m2[0];
  }
}

template <typename Acc>
__global__ void stats_final_kernel(const Acc* __restrict__ partial, Acc* __restrict__ mean_out,
                                   Acc* __restrict__ var_out, int64_t c, int splits) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ch >= c) return;
  double mean = 0, m2 = 0, count = 0;
  for (int s = 0; s < splits; ++s) {
    const Acc* p = partial + (ch * splits + s) * 3;
    welford_merge<double>(mean, m2, count, p[1], p[2], p[0]);
  }
  mean_out[ch] = static_cast<Acc>(mean);
  var_out[ch] = static_cast<Acc>(count > 0 ? m2 / count : 0.0);
}

// z = x * scale + shift, one rounding (fma), in the forward and in the backward's ReLU mask alike.
template <typename Acc>
__device__ __forceinline__ Acc bn_pre(Acc x, Acc scale, Acc shift) {
  return fma(x, scale, shift);
}

// y = relu(x * scale[ch] + shift[ch])
template <typename T, typename Acc>
__global__ void scale_shift_relu_kernel(const T* __restrict__ x, const Acc* __restrict__ scale,
                                        const Acc* __restrict__ shift, T* __restrict__ y,
                                        int64_t total, int64_t c, int64_t plane,
                                        bool channels_last) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += stride) {
    const int64_t ch = channels_last ? i % c : (i / plane) % c;
    const Acc v = bn_pre(static_cast<Acc>(x[i]), scale[ch], shift[ch]);
    y[i] = static_cast<T>(v > Acc(0) ? v : Acc(0));
  }
}

// partial[(ch * splits + split) * 2 + {0,1}] = (sum g [z>0], sum g [z>0] (x - mean)).
template <typename T, typename Acc>
__global__ void backward_partial_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                        const Acc* __restrict__ scale,
                                        const Acc* __restrict__ shift,
                                        const Acc* __restrict__ mean, Acc* __restrict__ partial,
                                        int64_t m, int64_t c, int64_t plane, bool channels_last) {
  const int64_t ch = blockIdx.x;
  const int splits = gridDim.y;
  const Acc mu = mean[ch], s = scale[ch], sh = shift[ch];
  Acc a = 0, b = 0;
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < m;
       j += static_cast<int64_t>(splits) * blockDim.x) {
    const int64_t o = channel_offset(j, ch, c, plane, channels_last);
    const Acc xv = static_cast<Acc>(x[o]);
    if (bn_pre(xv, s, sh) > Acc(0)) {
      const Acc gv = static_cast<Acc>(g[o]);
      a += gv;
      b += gv * (xv - mu);
    }
  }
  __shared__ Acc s_a[kThreads], s_b[kThreads];
  s_a[threadIdx.x] = a;
  s_b[threadIdx.x] = b;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      s_a[threadIdx.x] += s_a[threadIdx.x + half];
      s_b[threadIdx.x] += s_b[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    Acc* out = partial + (ch * splits + blockIdx.y) * 2;
    out[0] = s_a[0];
    out[1] = s_b[0];
  }
}

template <typename Acc>
__global__ void backward_final_kernel(const Acc* __restrict__ partial, double* __restrict__ sum_g,
                                      double* __restrict__ sum_gx, int64_t c, int splits) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ch >= c) return;
  double a = 0, b = 0;
  for (int s = 0; s < splits; ++s) {
    a += static_cast<double>(partial[(ch * splits + s) * 2]);
    b += static_cast<double>(partial[(ch * splits + s) * 2 + 1]);
  }
  sum_g[ch] = a;
  sum_gx[ch] = b;
}

// grad_x = [z > 0] g k[ch] + x p[ch] + q[ch]
template <typename T, typename Acc>
__global__ void backward_apply_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                      const Acc* __restrict__ scale, const Acc* __restrict__ shift,
                                      const Acc* __restrict__ k, const Acc* __restrict__ p,
                                      const Acc* __restrict__ q, T* __restrict__ out,
                                      int64_t total, int64_t c, int64_t plane,
                                      bool channels_last) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += stride) {
    const int64_t ch = channels_last ? i % c : (i / plane) % c;
    const Acc xv = static_cast<Acc>(x[i]);
    const Acc gm = bn_pre(xv, scale[ch], shift[ch]) > Acc(0) ? static_cast<Acc>(g[i]) : Acc(0);
    out[i] = static_cast<T>(gm * k[ch] + xv * p[ch] + q[ch]);
  }
}

// Statistics dtype: float32 for the half types, else x's dtype.
at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

int splits_for(int64_t m) {
  return static_cast<int>(std::clamp<int64_t>((m + kThreads * 16 - 1) / (kThreads * 16), 1, 256));
}

int elementwise_blocks(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_relu_stats_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  check_bn_relu_inputs("bn_relu_stats_forward", x, weight, bias);
  c10::cuda::CUDAGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const at::Tensor xc = x.contiguous(memory_format(cl));
  const int64_t c = x.size(1), total = xc.numel(), m = total / c, plane = m / x.size(0);
  const at::ScalarType acc = acc_type(x);
  at::Tensor mean = at::empty({c}, x.options().dtype(acc));
  at::Tensor var = at::empty({c}, x.options().dtype(acc));
  at::Tensor y = at::empty_like(xc, memory_format(cl));
  const int splits = splits_for(m);
  at::Tensor partial = at::empty({c * splits * 3}, x.options().dtype(acc));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    stats_partial_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(c), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
        xc.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), m, c, plane, cl);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    stats_final_kernel<acc_t><<<(c + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), mean.mutable_data_ptr<acc_t>(),
        var.mutable_data_ptr<acc_t>(), c, splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const BnReluAffine affine = bn_relu_affine(weight, bias, mean, var, eps, acc);
  const at::Tensor& scale = affine.scale;
  const at::Tensor& shift = affine.shift;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_apply", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scale_shift_relu_kernel<scalar_t, acc_t><<<elementwise_blocks(total), kThreads, 0, stream>>>(
        xc.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(),
        y.mutable_data_ptr<scalar_t>(), total, c, plane, cl);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, affine.invstd.to(acc), var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, double eps) {
  check_bn_relu_inputs("bn_relu_backward", x, weight, bias);
  check_bn_relu_backward_inputs(grad_y, x, mean, var);
  c10::cuda::CUDAGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const at::MemoryFormat fmt = memory_format(cl);
  const at::Tensor xc = x.contiguous(fmt), gc = grad_y.contiguous(fmt);
  const int64_t c = x.size(1), total = xc.numel(), m = total / c, plane = m / x.size(0);
  const at::ScalarType acc = acc_type(x);
  const BnReluAffine affine = bn_relu_affine(weight, bias, mean, var, eps, acc);
  const at::Tensor mean_a = mean.to(acc).contiguous();
  const int splits = splits_for(m);
  at::Tensor partial = at::empty({c * splits * 2}, x.options().dtype(acc));
  at::Tensor sum_g = at::empty({c}, x.options().dtype(at::kDouble));
  at::Tensor sum_gx = at::empty({c}, x.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_reduce", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_partial_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(c), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
        affine.scale.const_data_ptr<acc_t>(), affine.shift.const_data_ptr<acc_t>(),
        mean_a.const_data_ptr<acc_t>(), partial.mutable_data_ptr<acc_t>(), m, c, plane, cl);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_final_kernel<acc_t><<<(c + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), sum_g.mutable_data_ptr<double>(),
        sum_gx.mutable_data_ptr<double>(), c, splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const double count = static_cast<double>(m);
  const auto co = bn_relu_backward_coefficients(sum_g, sum_gx, mean, affine.invstd, weight, count);
  const at::Tensor p = co.p.to(acc).contiguous();
  const at::Tensor q = co.q.to(acc).contiguous();
  const at::Tensor k_a = co.k.to(acc).contiguous();
  at::Tensor grad_x = at::empty_like(xc, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_apply_kernel<scalar_t, acc_t><<<elementwise_blocks(total), kThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
        affine.scale.const_data_ptr<acc_t>(), affine.shift.const_data_ptr<acc_t>(),
        k_a.const_data_ptr<acc_t>(), p.const_data_ptr<acc_t>(), q.const_data_ptr<acc_t>(),
        grad_x.mutable_data_ptr<scalar_t>(), total, c, plane, cl);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, co.grad_weight, co.grad_bias};
}

}  // namespace
}  // namespace transfusion::cuda

TORCH_LIBRARY_IMPL(transfusion, CUDA, m) {
  m.impl("bn_relu_stats_forward", &transfusion::cuda::bn_relu_stats_forward);
  m.impl("bn_relu_backward", &transfusion::cuda::bn_relu_backward);
}
