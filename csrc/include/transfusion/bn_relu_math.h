#pragma once
// The per-channel maths of the fused training-mode BatchNorm + ReLU, shared by the CPU and CUDA
// ops, so the forward and the backward (and both devices) derive their constants identically.
#include <ATen/ATen.h>

namespace transfusion {

// y = relu(x * scale + shift) with scale = weight * invstd, shift = bias - mean * scale and
// invstd = 1 / sqrt(var + eps), computed in float64 and rounded once to `dtype`. The backward
// calls this again with the forward's saved mean and var, so the ReLU mask it recomputes from x
// (x * scale + shift > 0) is the forward's exactly.
struct BnReluAffine {
  at::Tensor invstd;        // float64, (C,)
  at::Tensor scale, shift;  // dtype, (C,), contiguous
};

inline BnReluAffine bn_relu_affine(const at::Tensor& weight, const at::Tensor& bias,
                                   const at::Tensor& mean, const at::Tensor& var, double eps,
                                   at::ScalarType dtype) {
  const at::Tensor invstd = (var.to(at::kDouble) + eps).rsqrt();
  const at::Tensor scale = weight.to(at::kDouble) * invstd;
  const at::Tensor shift = bias.to(at::kDouble) - mean.to(at::kDouble) * scale;
  return {invstd, scale.to(dtype).contiguous(), shift.to(dtype).contiguous()};
}

// The backward's per-channel coefficients. With g the ReLU-masked output gradient, M the count per
// channel and the reductions sum_g = sum(g), sum_gx = sum(g * (x - mean)) (float64):
//   grad_x = k * (g - sum_g / M - (x - mean) * invstd^2 * sum_gx / M) = g * k + x * p + q
//   grad_weight = sum_gx * invstd, grad_bias = sum_g
struct BnReluBackwardCoefficients {
  at::Tensor k, p, q;                 // float64, (C,)
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
