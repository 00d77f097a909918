// CPU implementation of the training-mode BatchNorm + ReLU ops (schemas in registration.cpp):
//   bn_relu_stats_forward: batch statistics in one pass, then normalise + affine + ReLU in one pass
//   bn_relu_backward:      BN backward with the ReLU mask fused and recomputed from x (no y
//                          kept): one reduction pass, one elementwise pass.
// The layout choice and the tiny per-channel algebra live here (checks and the channels_last
// test in include/transfusion/checks.h); the loops in kernels/.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "transfusion/bn_relu_math.h"
#include "transfusion/checks.h"
#include "transfusion/cpu_dispatch.h"
#include "transfusion/cpu_output.h"

TRANSFUSION_DECLARE_CPU_KERNEL(void, scale_shift_relu_kernel, const at::Tensor& x,
                               const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y,
                               bool channels_last)
TRANSFUSION_DECLARE_CPU_KERNEL(void, bn_stats_kernel, const at::Tensor& x, at::Tensor& mean,
                               at::Tensor& var, bool channels_last)
TRANSFUSION_DECLARE_CPU_KERNEL(void, bn_relu_backward_reduce_kernel, const at::Tensor& grad_y,
                               const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, const at::Tensor& mean, at::Tensor& sum_g,
                               at::Tensor& sum_gx, bool channels_last)
TRANSFUSION_DECLARE_CPU_KERNEL(void, bn_relu_backward_apply_kernel, const at::Tensor& grad_y,
                               const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, const at::Tensor& k, const at::Tensor& p,
                               const at::Tensor& q, at::Tensor& grad_x, bool channels_last)

namespace transfusion::cpu {
namespace {

// The shared checks (checks.h) plus the CPU kernels' one dtype for x, weight and bias.
void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight,
                  const at::Tensor& bias) {
  check_bn_relu_inputs(op, x, weight, bias);
  check_cpu_float(op, x);
  check_dtype_of_x(op, "weight", weight, x);
  check_dtype_of_x(op, "bias", bias, x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_relu_stats_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  check_inputs("bn_relu_stats_forward", x, weight, bias);
  const bool cl = is_channels_last(x);
  const at::Tensor xc = x.contiguous(memory_format(cl));
  const int64_t c = x.size(1);
  at::Tensor mean = at::empty({c}, x.options());
  at::Tensor var = at::empty({c}, x.options());
  TRANSFUSION_CPU_KERNEL(bn_stats_kernel)(xc, mean, var, cl);
  const BnReluAffine affine = bn_relu_affine(weight, bias, mean, var, eps, x.scalar_type());
  at::Tensor y = empty_output_like(xc, memory_format(cl));
  TRANSFUSION_CPU_KERNEL(scale_shift_relu_kernel)(xc, affine.scale, affine.shift, y, cl);
  return {y, mean, affine.invstd.to(x.scalar_type()), var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, double eps) {
  check_inputs("bn_relu_backward", x, weight, bias);
  check_bn_relu_backward_inputs(grad_y, x, mean, var);
  const bool cl = is_channels_last(x);
  const at::MemoryFormat fmt = memory_format(cl);
  const at::Tensor xc = x.contiguous(fmt), gc = grad_y.contiguous(fmt);
  const at::ScalarType dtype = x.scalar_type();
  const BnReluAffine affine = bn_relu_affine(weight, bias, mean, var, eps, dtype);
  const at::Tensor mean_c = mean.to(dtype).contiguous();
  const int64_t c = x.size(1);
  const double count = static_cast<double>(x.numel() / c);
  at::Tensor sum_g = at::empty({c}, x.options().dtype(at::kDouble));
  at::Tensor sum_gx = at::empty({c}, x.options().dtype(at::kDouble));
  TRANSFUSION_CPU_KERNEL(bn_relu_backward_reduce_kernel)(gc, xc, affine.scale, affine.shift, mean_c,
                                                         sum_g, sum_gx, cl);

  const auto co = bn_relu_backward_coefficients(sum_g, sum_gx, mean, affine.invstd, weight, count);
  at::Tensor grad_x = empty_output_like(xc, fmt);
  TRANSFUSION_CPU_KERNEL(bn_relu_backward_apply_kernel)(
      gc, xc, affine.scale, affine.shift, co.k.to(dtype), co.p.to(dtype), co.q.to(dtype), grad_x,
      cl);
  return {grad_x, co.grad_weight, co.grad_bias};
}

}  // namespace
}  // namespace transfusion::cpu

TORCH_LIBRARY_IMPL(transfusion, CPU, m) {
  m.impl("bn_relu_stats_forward", &transfusion::cpu::bn_relu_stats_forward);
  m.impl("bn_relu_backward", &transfusion::cpu::bn_relu_backward);
}
