#pragma once
// Run-time choice between the per-capability builds of a CPU kernel (see CMakeLists.txt).
// A kernel file under csrc/cpu/kernels/ defines its entry point inside
// `namespace transfusion::cpu::CPU_CAPABILITY`; CMake compiles it three times (DEFAULT, AVX2,
// AVX512; on processors other than x86-64 all three are plain builds) and the op calls the best
// variant the processor supports through TRANSFUSION_CPU_DISPATCH.
#include <string>

namespace transfusion::cpu {

enum class Capability { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The best capability this processor supports. TRANSFUSION_CPU_CAPABILITY=default|avx2|avx512 in
// the environment caps it (read once), for tests and benchmarks of the lower paths.
Capability best_capability();
std::string capability_name(Capability c);

template <typename F>
F select_kernel(F default_fn, F avx2_fn, F avx512_fn) {
  switch (best_capability()) {
    case Capability::AVX512: return avx512_fn;
    case Capability::AVX2: return avx2_fn;
    default: return default_fn;
  }
}

}  // namespace transfusion::cpu

// Declares a kernel entry point in every capability namespace.
#define TRANSFUSION_DECLARE_CPU_KERNEL(RET, FN, ...)           \
  namespace transfusion::cpu::DEFAULT { RET FN(__VA_ARGS__); } \
  namespace transfusion::cpu::AVX2 { RET FN(__VA_ARGS__); }    \
  namespace transfusion::cpu::AVX512 { RET FN(__VA_ARGS__); }

// The best compiled variant of a kernel, as a function pointer.
#define TRANSFUSION_CPU_KERNEL(FN)                                                           \
  ::transfusion::cpu::select_kernel(&::transfusion::cpu::DEFAULT::FN,                        \
                                    &::transfusion::cpu::AVX2::FN, &::transfusion::cpu::AVX512::FN)
