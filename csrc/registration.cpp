// Every op's schema, in one place, plus the small pybind11 module that reports the build.
// Kernels register their implementations with TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "transfusion/cpu_dispatch.h"

TORCH_LIBRARY(transfusion, m) {
  // y = relu(x * scale[c] + shift[c]) with c the channel dimension (dim 1) of x (N, C, *).
  // The normalise + affine + ReLU pass of a conv-BN-ReLU block (BN folded into scale and shift).
  m.def("scale_shift_relu(Tensor x, Tensor scale, Tensor shift) -> Tensor");

  // Training-mode BatchNorm + ReLU after a conv (transfusion/ops/bn_relu_train.py, ops/cbr.py).
  // Batch statistics of x (N, C, *) per channel in one pass, then y = relu(BN(x)) in one pass.
  // Returns (y, mean, invstd, var) with var the biased batch variance; only y is differentiable.
  m.def("bn_relu_stats_forward(Tensor x, Tensor weight, Tensor bias, float eps) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  // Gradient of y = relu(BN(x)) wrt x, weight, bias, the ReLU mask taken from y (> 0).
  m.def("bn_relu_backward(Tensor grad_y, Tensor x, Tensor y, Tensor mean, Tensor invstd, "
        "Tensor weight) -> (Tensor, Tensor, Tensor)");

  // (gram, colsum) = sums over the rows of the shifted concatenation z = [x_1 .. x_k] - shift:
  // gram = z^T z (float64; blocks i != j only when cross), colsum = sum of z (float64).
  // The Gram pass of (SV)CCA / PWCCA / CKA; see csrc/include/transfusion/gram_pass.h.
  m.def("gram_pass(Tensor[] xs, Tensor shift, int chunk_rows, bool cross) -> (Tensor, Tensor)");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "transfusion's compiled kernels; ops live under torch.ops.transfusion";
  m.def("build_info", []() {
    py::dict info;
    info["torch_version"] = TRANSFUSION_TORCH_VERSION;
#if defined(TRANSFUSION_WITH_CUDA)
    info["cuda"] = true;
    info["cuda_archs"] = TRANSFUSION_CUDA_ARCHS;
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
#if defined(TRANSFUSION_CUDA_COMPILE_CHECKED)
    info["cuda_compile_checked"] = true;
#else
    info["cuda_compile_checked"] = false;
#endif
    info["cpu_capability"] =
        transfusion::cpu::capability_name(transfusion::cpu::best_capability());
    return info;
  });
}
