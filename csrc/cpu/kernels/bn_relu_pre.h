#pragma once
// The pre-activation z = x * scale + shift of a BatchNorm + ReLU with per-channel scale and shift,
// computed by ONE function for the forward (y = max(z, 0)) and for the backward (ReLU mask
// z > 0): the backward recomputes the mask from the saved conv output x instead of keeping y,
// and it matches the forward's bit for bit only if both evaluate z identically. Loop tails use
// partial vector loads, never a scalar expression a compiler might contract differently.
//
// Include after <ATen/cpu/vec/vec.h> in a kernel compiled per CPU capability.
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace transfusion::cpu::CPU_CAPABILITY {

template <typename T>
inline at::vec::Vectorized<T> bn_pre(const at::vec::Vectorized<T>& x,
                                     const at::vec::Vectorized<T>& scale,
                                     const at::vec::Vectorized<T>& shift) {
  return at::vec::fmadd(x, scale, shift);
}

// Loads `count` (<= Vec::size()) values; the rest of the register is zero.
template <typename T>
inline at::vec::Vectorized<T> load_part(const T* p, int64_t count) {
  using Vec = at::vec::Vectorized<T>;
  return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
}

template <typename T>
inline void store_part(const at::vec::Vectorized<T>& v, T* p, int64_t count) {
  using Vec = at::vec::Vectorized<T>;
  if (count == Vec::size()) v.store(p);
  else v.store(p, count);
}

}  // namespace transfusion::cpu::CPU_CAPABILITY
