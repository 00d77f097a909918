#include <cstdlib>
#include <string>

#include "transfusion/cpu_dispatch.h"

namespace transfusion::cpu {

namespace {
Capability detect() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Capability::AVX512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Capability::AVX2;
  }
#endif
  return Capability::DEFAULT;
}

Capability cap_from_env(Capability detected) {
  const char* env = std::getenv("TRANSFUSION_CPU_CAPABILITY");
  if (env == nullptr) return detected;
  std::string v(env);
  Capability wanted = detected;
  if (v == "default" || v == "DEFAULT") wanted = Capability::DEFAULT;
  else if (v == "avx2" || v == "AVX2") wanted = Capability::AVX2;
  else if (v == "avx512" || v == "AVX512") wanted = Capability::AVX512;
  return static_cast<int>(wanted) < static_cast<int>(detected) ? wanted : detected;
}
}  // namespace

Capability best_capability() {
  static const Capability cap = cap_from_env(detect());
  return cap;
}

std::string capability_name(Capability c) {
  switch (c) {
    case Capability::AVX512: return "AVX512";
    case Capability::AVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

}  // namespace transfusion::cpu
