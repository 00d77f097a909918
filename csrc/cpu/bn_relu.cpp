// CPU implementation of the training-mode BatchNorm + ReLU ops (schemas in registration.cpp):
//   bn_relu_stats_forward: batch statistics in one pass, then normalise + affine + ReLU in one pass
//   bn_relu_backward:      BN backward with the ReLU mask fused and recomputed from x (no y
//                          kept): one reduction pass, one elementwise pass.
// Checks, layout choice and the tiny per-channel algebra live here; the loops in kernels/.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "transfusion/bn_relu_math.h"
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

bool use_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must be (N, C, ...), got ", x.dim(), " dims");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": CPU supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1), op,
              ": weight must be (C,) = (", x.size(1), ",), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ",
              x.scalar_type(), ", got ", weight.scalar_type());
  TORCH_CHECK(x.numel() / std::max<int64_t>(x.size(1), 1) > 1, op,
              ": expected more than 1 value per channel when training, got input of size ",
              x.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_relu_stats_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  check_inputs("bn_relu_stats_forward", x, weight);
  TORCH_CHECK(bias.sizes() == weight.sizes() && bias.scalar_type() == x.scalar_type(),
              "bn_relu_stats_forward: bias must be (C,) with x's dtype");
  const bool cl = use_channels_last(x);
  const at::Tensor xc = x.contiguous(format_of(cl));
  const int64_t c = x.size(1);
  at::Tensor mean = at::empty({c}, x.options());
  at::Tensor var = at::empty({c}, x.options());
  TRANSFUSION_CPU_KERNEL(bn_stats_kernel)(xc, mean, var, cl);
  const BnReluAffine affine = bn_relu_affine(weight, bias, mean, var, eps, x.scalar_type());
  at::Tensor y = empty_output_like(xc, format_of(cl));
  TRANSFUSION_CPU_KERNEL(scale_shift_relu_kernel)(xc, affine.scale, affine.shift, y, cl);
  return {y, mean, affine.invstd.to(x.scalar_type()), var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, double eps) {
  check_inputs("bn_relu_backward", x, weight);
  check_backward_inputs(grad_y, x, weight, bias, mean, var);
  const bool cl = use_channels_last(x);
  const at::MemoryFormat fmt = format_of(cl);
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
