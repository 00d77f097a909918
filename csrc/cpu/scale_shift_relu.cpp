// CPU implementation of transfusion::scale_shift_relu: checks, layout choice, dispatch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "transfusion/cpu_dispatch.h"
#include "transfusion/cpu_output.h"

TRANSFUSION_DECLARE_CPU_KERNEL(void, scale_shift_relu_kernel, const at::Tensor& x,
                               const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y,
                               bool channels_last)

namespace transfusion::cpu {
namespace {

at::Tensor scale_shift_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  TORCH_CHECK(x.dim() >= 2, "scale_shift_relu: x must be (N, C, ...), got ", x.dim(), " dims");
  const int64_t channels = x.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == channels && shift.dim() == 1 &&
                  shift.size(0) == channels,
              "scale_shift_relu: scale and shift must be (C,) = (", channels, ",)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "scale_shift_relu: CPU supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(scale.scalar_type() == x.scalar_type() && shift.scalar_type() == x.scalar_type(),
              "scale_shift_relu: scale and shift must have x's dtype");
  const bool channels_last = x.dim() == 4 && !x.is_contiguous() &&
                             x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor xc = channels_last ? x : x.contiguous();
  at::Tensor y = empty_output_like(xc, channels_last ? at::MemoryFormat::ChannelsLast
                                                     : at::MemoryFormat::Contiguous);
  TRANSFUSION_CPU_KERNEL(scale_shift_relu_kernel)(xc, scale.contiguous(), shift.contiguous(), y,
                                                  channels_last);
  return y;
}

}  // namespace
}  // namespace transfusion::cpu

TORCH_LIBRARY_IMPL(transfusion, CPU, m) {
  m.impl("scale_shift_relu", &transfusion::cpu::scale_shift_relu);
}
