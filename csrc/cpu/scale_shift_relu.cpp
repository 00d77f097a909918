// CPU implementation of transfusion::scale_shift_relu: checks (include/transfusion/checks.h),
// layout choice, dispatch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "transfusion/checks.h"
#include "transfusion/cpu_dispatch.h"
#include "transfusion/cpu_output.h"

TRANSFUSION_DECLARE_CPU_KERNEL(void, scale_shift_relu_kernel, const at::Tensor& x,
                               const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y,
                               bool channels_last)

namespace transfusion::cpu {
namespace {

at::Tensor scale_shift_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  check_scale_shift_relu_inputs(x, scale, shift);
  check_cpu_float("scale_shift_relu", x);
  const bool channels_last = is_channels_last(x);
  const at::Tensor xc = channels_last ? x : x.contiguous();
  at::Tensor y = empty_output_like(xc, memory_format(channels_last));
  TRANSFUSION_CPU_KERNEL(scale_shift_relu_kernel)(xc, scale.contiguous(), shift.contiguous(), y,
                                                  channels_last);
  return y;
}

}  // namespace
}  // namespace transfusion::cpu

TORCH_LIBRARY_IMPL(transfusion, CPU, m) {
  m.impl("scale_shift_relu", &transfusion::cpu::scale_shift_relu);
}
