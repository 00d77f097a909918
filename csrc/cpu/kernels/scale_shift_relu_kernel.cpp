// y = relu(x * scale[c] + shift[c]), vectorised with at::vec, compiled once per CPU capability.
// z = x * scale + shift comes from bn_pre (bn_relu_pre.h), shared with the BN+ReLU backward's mask.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "bn_relu_pre.h"

namespace transfusion::cpu::CPU_CAPABILITY {

namespace {

template <typename T>
void planes_nchw(const T* x, const T* scale, const T* shift, T* y, int64_t n, int64_t c,
                 int64_t plane) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0));
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1));
  at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T s = scale[p % c];
      const T b = shift[p % c];
      const Vec vs(s), vb(b);
      const T* xp = x + p * plane;
      T* yp = y + p * plane;
      for (int64_t i = 0; i < plane; i += Vec::size()) {
        const int64_t len = std::min<int64_t>(Vec::size(), plane - i);
        store_part(at::vec::maximum(bn_pre(load_part(xp + i, len), vs, vb), zero), yp + i, len);
      }
    }
  });
}

template <typename T>
void rows_nhwc(const T* x, const T* scale, const T* shift, T* y, int64_t rows, int64_t c) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0));
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(c, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * c;
      T* yr = y + r * c;
      for (int64_t i = 0; i < c; i += Vec::size()) {
        const int64_t len = std::min<int64_t>(Vec::size(), c - i);
        const Vec z = bn_pre(load_part(xr + i, len), load_part(scale + i, len),
                             load_part(shift + i, len));
        store_part(at::vec::maximum(z, zero), yr + i, len);
      }
    }
  });
}

}  // namespace

void scale_shift_relu_kernel(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                             at::Tensor& y, bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_shift_relu", [&] {
    if (channels_last) {
      rows_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(),
                          shift.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                          n * plane, c);
    } else {
      planes_nchw<scalar_t>(x.const_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(),
                            shift.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), n, c,
                            plane);
    }
  });
}

}  // namespace transfusion::cpu::CPU_CAPABILITY
