#pragma once
// The per-channel coefficients of the fused BatchNorm + ReLU backward, shared by the CPU and CUDA
// ops. With g the ReLU-masked output gradient, M the count per channel and the reductions
// sum_g = sum(g), sum_gx = sum(g * (x - mean)) (float64):
//   grad_x = k * (g - sum_g / M - (x - mean) * invstd^2 * sum_gx / M) = g * k + x * p + q
//   grad_weight = sum_gx * invstd, grad_bias = sum_g
#include <ATen/ATen.h>

namespace transfusion {

struct BnReluBackwardCoefficients {
  at::Tensor k, p, q;  // float64, (C,)
  at::Tensor grad_weight, grad_bias;  // weight's dtype, (C,)
};

inline BnReluBackwardCoefficients bn_relu_backward_coefficients(
    const at::Tensor& sum_g, const at::Tensor& sum_gx, const at::Tensor& mean,
    const at::Tensor& invstd, const at::Tensor& weight, double count) {
  const at::Tensor inv = invstd.to(at::kDouble);
  const at::Tensor k = weight.to(at::kDouble) * inv;
  const at::Tensor b = inv * inv * sum_gx / count;
  return {k, -k * b, k * (b * mean.to(at::kDouble) - sum_g / count),
          (sum_gx * inv).to(weight.scalar_type()), sum_g.to(weight.scalar_type())};
}

}  // namespace transfusion
