#pragma once
// The input checks and the layout test of the per-channel ops (scale_shift_relu, the BatchNorm +
// ReLU pair), one copy for the CPU sources and the CUDA sources alike. Issue 13: the channels_last
// test had been written seven times (three in Python, four here) and each device spelled its own
// TORCH_CHECKs; the Python side's twin is transfusion/ops/dispatch.py. ATen core only, so the CUDA
// sources can include it (their compile check runs without cuBLAS / cuDNN headers).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace transfusion {

// x is 4-D, laid out channels_last (NHWC) and not also plain contiguous (C == 1 or H * W == 1
// are both): then the kernels walk rows of C values, else x made contiguous (NC*).
inline bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// x is (N, C, *): at least two dims, channels on dim 1.
inline void check_channels_input(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must be (N, C, ...), got ", x.dim(), " dims");
}

// v is a (C,) vector for x's C channels.
inline void check_per_channel(const char* op, const char* name, const at::Tensor& v,
                              const at::Tensor& x) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == x.size(1), op, ": ", name, " must be (C,) = (",
              x.size(1), ",), got ", v.sizes());
}

// t has x's dtype (the CPU kernels read every input in one dtype).
inline void check_dtype_of_x(const char* op, const char* name, const at::Tensor& t,
                             const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
}

// The CPU kernels are float32 and float64 (the Python ops send other dtypes to their fallback).
inline void check_cpu_float(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": CPU supports float32 and float64, got ", x.scalar_type());
}

// Batch statistics need more than one value per channel.
inline void check_batch_statistics(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.numel() / std::max<int64_t>(x.size(1), 1) > 1, op,
              ": expected more than 1 value per channel when training, got input of size ",
              x.sizes());
}

// scale_shift_relu's checks on every device: x (N, C, *), scale and shift (C,) in x's dtype.
inline void check_scale_shift_relu_inputs(const at::Tensor& x, const at::Tensor& scale,
                                          const at::Tensor& shift) {
  constexpr const char* op = "scale_shift_relu";
  check_channels_input(op, x);
  check_per_channel(op, "scale", scale, x);
  check_per_channel(op, "shift", shift, x);
  check_dtype_of_x(op, "scale", scale, x);
  check_dtype_of_x(op, "shift", shift, x);
}

// The BatchNorm + ReLU ops' checks on every device: x (N, C, *) with more than one value per
// channel, weight and bias (C,).
inline void check_bn_relu_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias) {
  check_channels_input(op, x);
  check_per_channel(op, "weight", weight, x);
  check_per_channel(op, "bias", bias, x);
  check_batch_statistics(op, x);
}

// The backward's checks beyond the forward's, the same on every device.
inline void check_bn_relu_backward_inputs(const at::Tensor& grad_y, const at::Tensor& x,
                                          const at::Tensor& mean, const at::Tensor& var) {
  constexpr const char* op = "bn_relu_backward";
  TORCH_CHECK(grad_y.sizes() == x.sizes(), op, ": grad_y must have x's shape ", x.sizes(),
              ", got ", grad_y.sizes());
  check_dtype_of_x(op, "grad_y", grad_y, x);
  check_per_channel(op, "mean", mean, x);
  check_per_channel(op, "var", var, x);
}

}  // namespace transfusion
