// Every op's schema, in one place, plus the small pybind11 module that reports the build.
// Kernels register their implementations with TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "transfusion/cpu_dispatch.h"
#include "transfusion/cpu_output.h"

TORCH_LIBRARY(transfusion, m) {
  // y = relu(x * scale[c] + shift[c]) with c the channel dimension (dim 1) of x (N, C, *).
  // The normalise + affine + ReLU pass of a conv-BN-ReLU block (BN folded into scale and shift).
  m.def("scale_shift_relu(Tensor x, Tensor scale, Tensor shift) -> Tensor");

  // Training-mode BatchNorm + ReLU after a conv (transfusion/ops/bn_relu_train.py, ops/cbr.py).
  // Batch statistics of x (N, C, *) per channel in one pass, then y = relu(BN(x)) in one pass.
  // Returns (y, mean, invstd, var) with var the biased batch variance; only y is differentiable.
  m.def("bn_relu_stats_forward(Tensor x, Tensor weight, Tensor bias, float eps) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  // Gradient of y = relu(BN(x)) wrt x, weight, bias from the forward's inputs and statistics
  // (mean, biased var): the ReLU mask is recomputed from x exactly as the forward computed y, so
  // autograd keeps x and (C,) vectors, never y.
  m.def("bn_relu_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor bias, Tensor mean, "
        "Tensor var, float eps) -> (Tensor, Tensor, Tensor)");

  // (gram, colsum) = sums over the rows of the shifted concatenation z = [x_1 .. x_k] - shift:
  // gram = z^T z (float64; blocks i != j only when cross), colsum = sum of z (float64).
  // The Gram pass of (SV)CCA / PWCCA / CKA; see csrc/include/transfusion/gram_pass.h.
  m.def("gram_pass(Tensor[] xs, Tensor shift, int chunk_rows, bool cross) -> (Tensor, Tensor, Tensor)");
  // The same pass with the cross blocks taken within groups of consecutive inputs only
  // (group_sizes adds up to len(xs)): e.g. [2, 2, 2] gives the x_i, y_i blocks of three pairs in
  // one sweep (the batched many-pairs path), without the blocks between pairs.
  m.def("gram_pass_groups(Tensor[] xs, Tensor shift, int chunk_rows, int[] group_sizes) -> "
        "(Tensor, Tensor, Tensor)");
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
#if defined(_OPENMP)
    info["openmp"] = true;  // at::parallel_for in our kernels runs on torch's threads
#else
    info["openmp"] = false;
#endif
    info["cpu_capability"] =
        transfusion::cpu::capability_name(transfusion::cpu::best_capability());
    return info;
  });
  m.def("cpu_output_cache_info", []() {
    const auto [cached, limit] = transfusion::cpu::output_cache_info();
    py::dict info;
    info["cached_bytes"] = cached;
    info["limit_bytes"] = limit;
    return info;
  }, "Bytes the CPU ops' output allocator holds for reuse, and its limit "
     "(TRANSFUSION_CPU_OUTPUT_CACHE_MIB).");
  m.def("empty_cpu_output_cache", &transfusion::cpu::empty_output_cache,
        "Frees the blocks the CPU ops' output allocator holds for reuse.");
}
