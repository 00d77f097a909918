// Per-channel reductions of a training-mode BatchNorm + ReLU, vectorised with at::vec and
// compiled once per CPU capability (see cpu_dispatch.h).
//
//   bn_stats_kernel:           mean and biased variance per channel in ONE pass over memory:
//                              the data is cut into cache-sized chunks, each chunk gets an exact
//                              two-pass (mean, then sum of squared deviations) while it sits in
//                              cache, and the chunks are merged with Chan's parallel formula in
//                              double. Stable for any N*H*W (no sum-of-squares cancellation).
//   bn_relu_backward_reduce_kernel:
//                              sum_g = sum(g * [y > 0]) and sum_gx = sum(g * [y > 0] * (x - mean))
//                              per channel, the ReLU mask fused in (derived from the output y).
//   bn_relu_backward_apply_kernel:
//                              grad_x = [y > 0] * g * k + x * p + q with per-channel k, p, q.
//
// Layouts: NC* contiguous (one "plane" of H*W values per (n, c)) and channels_last (rows of C).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace transfusion::cpu::CPU_CAPABILITY {

namespace {

// Elements per chunk: small enough that the second pass over a chunk hits L1/L2.
constexpr int64_t kChunk = 4096;

// Running (count, mean, M2) of one channel, merged chunk by chunk (Chan et al.).
struct Moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;
  void merge(double n_b, double mean_b, double m2_b) {
    if (n_b == 0.0) return;
    const double n = count + n_b;
    const double delta = mean_b - mean;
    mean += delta * (n_b / n);
    m2 += m2_b + delta * delta * (count * n_b / n);
    count = n;
  }
};

// Horizontal sum of one vector register.
template <typename T>
T hsum(const at::vec::Vectorized<T>& v) {
  alignas(64) T buf[at::vec::Vectorized<T>::size()];
  v.store(buf);
  T s = T(0);
  for (int64_t i = 0; i < at::vec::Vectorized<T>::size(); ++i) s += buf[i];
  return s;
}

template <typename T>
T vec_sum(const T* x, int64_t len) {
  using Vec = at::vec::Vectorized<T>;
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= len; i += Vec::size()) acc = acc + Vec::loadu(x + i);
  T s = hsum<T>(acc);
  for (; i < len; ++i) s += x[i];
  return s;
}

template <typename T>
T vec_sq_dev(const T* x, int64_t len, T m) {
  using Vec = at::vec::Vectorized<T>;
  const Vec vm(m);
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= len; i += Vec::size()) {
    const Vec d = Vec::loadu(x + i) - vm;
    acc = at::vec::fmadd(d, d, acc);
  }
  T s = hsum<T>(acc);
  for (; i < len; ++i) s += (x[i] - m) * (x[i] - m);
  return s;
}

template <typename T>
void stats_nchw(const T* x, T* mean, T* var, int64_t n, int64_t c, int64_t plane) {
  at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      Moments m;
      for (int64_t b = 0; b < n; ++b) {
        const T* xp = x + (b * c + ch) * plane;
        for (int64_t s = 0; s < plane; s += kChunk) {
          const int64_t len = std::min(kChunk, plane - s);
          const T cm = vec_sum(xp + s, len) / static_cast<T>(len);
          m.merge(static_cast<double>(len), static_cast<double>(cm),
                  static_cast<double>(vec_sq_dev(xp + s, len, cm)));
        }
      }
      mean[ch] = static_cast<T>(m.mean);
      var[ch] = static_cast<T>(m.count > 0 ? m.m2 / m.count : 0.0);
    }
  });
}

template <typename T>
void stats_nhwc(const T* x, T* mean, T* var, int64_t rows, int64_t c) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunk / std::max<int64_t>(c, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const int nthreads = at::get_num_threads();
  std::vector<Moments> partial(static_cast<size_t>(nthreads) * c);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    Moments* mine = partial.data() + static_cast<size_t>(at::get_thread_num()) * c;
    std::vector<T> cm(c), sq(c);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t r0 = k * rows_per_chunk;
      const int64_t r1 = std::min(rows, r0 + rows_per_chunk);
      std::fill(cm.begin(), cm.end(), T(0));
      std::fill(sq.begin(), sq.end(), T(0));
      for (int64_t r = r0; r < r1; ++r) {  // pass 1: chunk sums per channel
        const T* xr = x + r * c;
        int64_t i = 0;
        for (; i + Vec::size() <= c; i += Vec::size())
          (Vec::loadu(cm.data() + i) + Vec::loadu(xr + i)).store(cm.data() + i);
        for (; i < c; ++i) cm[i] += xr[i];
      }
      const T inv = T(1) / static_cast<T>(r1 - r0);
      for (int64_t i = 0; i < c; ++i) cm[i] *= inv;
      for (int64_t r = r0; r < r1; ++r) {  // pass 2, from cache: squared deviations
        const T* xr = x + r * c;
        int64_t i = 0;
        for (; i + Vec::size() <= c; i += Vec::size()) {
          const Vec d = Vec::loadu(xr + i) - Vec::loadu(cm.data() + i);
          at::vec::fmadd(d, d, Vec::loadu(sq.data() + i)).store(sq.data() + i);
        }
        for (; i < c; ++i) sq[i] += (xr[i] - cm[i]) * (xr[i] - cm[i]);
      }
      for (int64_t i = 0; i < c; ++i)
        mine[i].merge(static_cast<double>(r1 - r0), static_cast<double>(cm[i]),
                      static_cast<double>(sq[i]));
    }
  });
  for (int64_t i = 0; i < c; ++i) {
    Moments m;
    for (int t = 0; t < nthreads; ++t) {
      const Moments& p = partial[static_cast<size_t>(t) * c + i];
      m.merge(p.count, p.mean, p.m2);
    }
    mean[i] = static_cast<T>(m.mean);
    var[i] = static_cast<T>(m.count > 0 ? m.m2 / m.count : 0.0);
  }
}

// sum over a run of g * [y > 0] and of g * [y > 0] * (x - m).
template <typename T>
void masked_sums(const T* g, const T* x, const T* y, int64_t len, T m, T& s_g, T& s_gx) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), vm(m);
  Vec a(T(0)), b(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= len; i += Vec::size()) {
    const Vec gm = Vec::blendv(zero, Vec::loadu(g + i), Vec::loadu(y + i) > zero);
    a = a + gm;
    b = at::vec::fmadd(gm, Vec::loadu(x + i) - vm, b);
  }
  T sa = hsum<T>(a);
  T sb = hsum<T>(b);
  for (; i < len; ++i) {
    if (y[i] > T(0)) {
      sa += g[i];
      sb += g[i] * (x[i] - m);
    }
  }
  s_g = sa;
  s_gx = sb;
}

template <typename T>
void reduce_nchw(const T* g, const T* x, const T* y, const T* mean, double* sum_g, double* sum_gx,
                 int64_t n, int64_t c, int64_t plane) {
  at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double a = 0.0, b = 0.0;
      for (int64_t bi = 0; bi < n; ++bi) {
        const int64_t off = (bi * c + ch) * plane;
        for (int64_t s = 0; s < plane; s += kChunk) {
          const int64_t len = std::min(kChunk, plane - s);
          T sa, sb;
          masked_sums(g + off + s, x + off + s, y + off + s, len, mean[ch], sa, sb);
          a += sa;
          b += sb;
        }
      }
      sum_g[ch] = a;
      sum_gx[ch] = b;
    }
  });
}

template <typename T>
void reduce_nhwc(const T* g, const T* x, const T* y, const T* mean, double* sum_g, double* sum_gx,
                 int64_t rows, int64_t c) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunk / std::max<int64_t>(c, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const int nthreads = at::get_num_threads();
  std::vector<double> part_a(static_cast<size_t>(nthreads) * c, 0.0);
  std::vector<double> part_b(static_cast<size_t>(nthreads) * c, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    const size_t t = static_cast<size_t>(at::get_thread_num());
    std::vector<T> a(c), b(c);
    const Vec zero(T(0));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t r0 = k * rows_per_chunk;
      const int64_t r1 = std::min(rows, r0 + rows_per_chunk);
      std::fill(a.begin(), a.end(), T(0));
      std::fill(b.begin(), b.end(), T(0));
      for (int64_t r = r0; r < r1; ++r) {
        const T* gr = g + r * c;
        const T* xr = x + r * c;
        const T* yr = y + r * c;
        int64_t i = 0;
        for (; i + Vec::size() <= c; i += Vec::size()) {
          const Vec gm = Vec::blendv(zero, Vec::loadu(gr + i), Vec::loadu(yr + i) > zero);
          (Vec::loadu(a.data() + i) + gm).store(a.data() + i);
          at::vec::fmadd(gm, Vec::loadu(xr + i) - Vec::loadu(mean + i), Vec::loadu(b.data() + i))
              .store(b.data() + i);
        }
        for (; i < c; ++i) {
          if (yr[i] > T(0)) {
            a[i] += gr[i];
            b[i] += gr[i] * (xr[i] - mean[i]);
          }
        }
      }
      for (int64_t i = 0; i < c; ++i) {
        part_a[t * c + i] += static_cast<double>(a[i]);
        part_b[t * c + i] += static_cast<double>(b[i]);
      }
    }
  });
  for (int64_t i = 0; i < c; ++i) {
    double sa = 0.0, sb = 0.0;
    for (int t = 0; t < nthreads; ++t) {
      sa += part_a[static_cast<size_t>(t) * c + i];
      sb += part_b[static_cast<size_t>(t) * c + i];
    }
    sum_g[i] = sa;
    sum_gx[i] = sb;
  }
}

// grad_x = [y > 0] * g * k + x * p + q over one run with constant k, p, q (NC* planes).
template <typename T>
void apply_run(const T* g, const T* x, const T* y, T* out, int64_t len, T k, T p, T q) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), vk(k), vp(p), vq(q);
  int64_t i = 0;
  for (; i + Vec::size() <= len; i += Vec::size()) {
    const Vec gm = Vec::blendv(zero, Vec::loadu(g + i), Vec::loadu(y + i) > zero);
    at::vec::fmadd(gm, vk, at::vec::fmadd(Vec::loadu(x + i), vp, vq)).store(out + i);
  }
  for (; i < len; ++i) out[i] = (y[i] > T(0) ? g[i] * k : T(0)) + x[i] * p + q;
}

}  // namespace

void bn_stats_kernel(const at::Tensor& x, at::Tensor& mean, at::Tensor& var, bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_stats", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* vp = var.mutable_data_ptr<scalar_t>();
    if (channels_last) stats_nhwc<scalar_t>(xp, mp, vp, n * plane, c);
    else stats_nchw<scalar_t>(xp, mp, vp, n, c, plane);
  });
}

void bn_relu_backward_reduce_kernel(const at::Tensor& grad_y, const at::Tensor& x,
                                    const at::Tensor& y, const at::Tensor& mean,
                                    at::Tensor& sum_g, at::Tensor& sum_gx, bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_relu_backward_reduce", [&] {
    const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    double* a = sum_g.mutable_data_ptr<double>();
    double* b = sum_gx.mutable_data_ptr<double>();
    if (channels_last) reduce_nhwc<scalar_t>(gp, xp, yp, mp, a, b, n * plane, c);
    else reduce_nchw<scalar_t>(gp, xp, yp, mp, a, b, n, c, plane);
  });
}

void bn_relu_backward_apply_kernel(const at::Tensor& grad_y, const at::Tensor& x,
                                   const at::Tensor& y, const at::Tensor& k, const at::Tensor& p,
                                   const at::Tensor& q, at::Tensor& grad_x, bool channels_last) {
  using at::vec::Vectorized;
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_relu_backward_apply", [&] {
    using T = scalar_t;
    using Vec = Vectorized<T>;
    const T* gp = grad_y.const_data_ptr<T>();
    const T* xp = x.const_data_ptr<T>();
    const T* yp = y.const_data_ptr<T>();
    const T* kp = k.const_data_ptr<T>();
    const T* pp = p.const_data_ptr<T>();
    const T* qp = q.const_data_ptr<T>();
    T* op = grad_x.mutable_data_ptr<T>();
    if (channels_last) {
      const int64_t rows = n * plane;
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(c, 1));
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        const Vec zero(T(0));
        for (int64_t r = begin; r < end; ++r) {
          const int64_t o = r * c;
          int64_t i = 0;
          for (; i + Vec::size() <= c; i += Vec::size()) {
            const Vec gm = Vec::blendv(zero, Vec::loadu(gp + o + i), Vec::loadu(yp + o + i) > zero);
            at::vec::fmadd(gm, Vec::loadu(kp + i),
                           at::vec::fmadd(Vec::loadu(xp + o + i), Vec::loadu(pp + i),
                                          Vec::loadu(qp + i)))
                .store(op + o + i);
          }
          for (; i < c; ++i)
            op[o + i] = (yp[o + i] > T(0) ? gp[o + i] * kp[i] : T(0)) + xp[o + i] * pp[i] + qp[i];
        }
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1));
      at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
        for (int64_t pl = begin; pl < end; ++pl) {
          const int64_t ch = pl % c, o = pl * plane;
          apply_run(gp + o, xp + o, yp + o, op + o, plane, kp[ch], pp[ch], qp[ch]);
        }
      });
    }
  });
}

}  // namespace transfusion::cpu::CPU_CAPABILITY
