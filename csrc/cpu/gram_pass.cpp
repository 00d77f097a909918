// CPU implementation of transfusion::gram_pass (see transfusion/gram_pass.h): the chunk loop with
// MKL GEMMs through ATen, and the fused centre-and-column-sum kernel compiled per CPU capability.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "transfusion/cpu_dispatch.h"
#include "transfusion/gram_pass.h"

TRANSFUSION_DECLARE_CPU_KERNEL(void, centre_chunk_kernel, const at::Tensor& x,
                               const at::Tensor& shift, at::Tensor& out, at::Tensor& colsum)

namespace transfusion::cpu {
namespace {

void centre(const at::Tensor& x, const at::Tensor& shift, at::Tensor& out, at::Tensor& colsum) {
  TRANSFUSION_CPU_KERNEL(centre_chunk_kernel)(x, shift, out, colsum);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_pass(at::TensorList xs, const at::Tensor& shift,
                                             int64_t chunk_rows, bool cross) {
  return gram_pass_impl(xs, shift, chunk_rows, cross, &centre, "gram_pass (CPU)");
}

}  // namespace
}  // namespace transfusion::cpu

TORCH_LIBRARY_IMPL(transfusion, CPU, m) {
  m.impl("gram_pass", &transfusion::cpu::gram_pass);
}
