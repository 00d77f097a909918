// Per-channel reductions of a training-mode BatchNorm + ReLU, vectorised with at::vec and
// compiled once per CPU capability (see cpu_dispatch.h).
//
//   bn_stats_kernel:           mean and biased variance per channel in ONE pass over memory:
//                              the data is cut into cache-sized chunks, each chunk gets an exact
//                              two-pass (mean, then sum of squared deviations) while it sits in
//                              cache, and the chunks are merged with Chan's parallel formula in
//                              double. Stable for any N*H*W (no sum-of-squares cancellation).
//   bn_relu_backward_reduce_kernel:
//                              sum_g = sum(g * [z > 0]) and sum_gx = sum(g * [z > 0] * (x - mean))
//                              per channel, the ReLU mask fused in and recomputed from x
//                              (z = x * scale + shift, exactly as the forward: bn_relu_pre.h), so
//                              neither the output y nor a mask is kept for backward.
//   bn_relu_backward_apply_kernel:
//                              grad_x = [z > 0] * g * k + x * p + q with per-channel k, p, q.
// The backward reads g and x twice and writes grad_x once: five passes over memory, against
// eight for eager threshold_backward + native_batch_norm_backward.
//
// Layouts: NC* contiguous (one "plane" of H*W values per (n, c)) and channels_last (rows of C).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "bn_relu_pre.h"

namespace transfusion::cpu::CPU_CAPABILITY {

namespace {

// Elements per chunk: small enough that the second pass over a chunk hits L1/L2.
constexpr int64_t kChunk = 4096;
// channels_last chunks hold whole rows of C values and are merged per channel, so they are made
// larger (128 KiB of float, still in L2) to keep the per-chunk merges rare.
constexpr int64_t kChunkRows = 32768;

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
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkRows / std::max<int64_t>(c, 1));
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

// Over one run of a channel (constant scale s, shift b, mean m), with the ReLU mask recomputed
// from x (z = bn_pre(x, s, b) > 0): s_g += sum(g [z > 0]), s_gx += sum(g [z > 0] (x - m)).
// Two accumulator pairs keep the add chains short.
template <typename T>
void masked_sums(const T* g, const T* x, int64_t len, T s, T b, T m, T& s_g, T& s_gx) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), vs(s), vb(b), vm(m);
  Vec a0(T(0)), a1(T(0)), b0(T(0)), b1(T(0));
  int64_t i = 0;
  for (; i + 2 * Vec::size() <= len; i += 2 * Vec::size()) {
    const Vec x0 = Vec::loadu(x + i), x1 = Vec::loadu(x + i + Vec::size());
    const Vec g0 = Vec::blendv(zero, Vec::loadu(g + i), bn_pre(x0, vs, vb) > zero);
    const Vec g1 = Vec::blendv(zero, Vec::loadu(g + i + Vec::size()), bn_pre(x1, vs, vb) > zero);
    a0 = a0 + g0;
    a1 = a1 + g1;
    b0 = at::vec::fmadd(g0, x0 - vm, b0);
    b1 = at::vec::fmadd(g1, x1 - vm, b1);
  }
  for (; i < len; i += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), len - i);
    const Vec x0 = load_part(x + i, n);
    // padding lanes load g = 0, so they add nothing whatever their mask
    const Vec g0 = Vec::blendv(zero, load_part(g + i, n), bn_pre(x0, vs, vb) > zero);
    a0 = a0 + g0;
    b0 = at::vec::fmadd(g0, x0 - vm, b0);
  }
  s_g = hsum<T>(a0 + a1);
  s_gx = hsum<T>(b0 + b1);
}

// Per-thread partial sums, merged in double at the end: part[t][0][ch] = sum_g, part[t][1][ch].
class ChannelPartials {
 public:
  explicit ChannelPartials(int64_t c)
      : c_(c), part_(static_cast<size_t>(at::get_num_threads()) * 2 * c, 0.0) {}
  double* mine() { return part_.data() + static_cast<size_t>(at::get_thread_num()) * 2 * c_; }
  void merge(double* sum_g, double* sum_gx) const {
    const size_t threads = part_.size() / (2 * std::max<int64_t>(c_, 1));
    for (int64_t ch = 0; ch < c_; ++ch) {
      double a = 0.0, b = 0.0;
      for (size_t t = 0; t < threads; ++t) {
        a += part_[t * 2 * c_ + ch];
        b += part_[t * 2 * c_ + c_ + ch];
      }
      sum_g[ch] = a;
      sum_gx[ch] = b;
    }
  }

 private:
  int64_t c_;
  std::vector<double> part_;
};

template <typename T>
void reduce_nchw(const T* g, const T* x, const T* scale, const T* shift, const T* mean,
                 double* sum_g, double* sum_gx, int64_t n, int64_t c, int64_t plane) {
  ChannelPartials partials(c);
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(plane, 1));
  at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
    double* mine = partials.mine();
    for (int64_t pl = begin; pl < end; ++pl) {
      const int64_t ch = pl % c, off = pl * plane;
      for (int64_t s = 0; s < plane; s += kChunk) {
        const int64_t len = std::min(kChunk, plane - s);
        T sa, sb;
        masked_sums(g + off + s, x + off + s, len, scale[ch], shift[ch], mean[ch], sa, sb);
        mine[ch] += static_cast<double>(sa);
        mine[c + ch] += static_cast<double>(sb);
      }
    }
  });
  partials.merge(sum_g, sum_gx);
}

// channels_last: rows of C values. A chunk of rows is reduced block of channels by block of
// channels (kBlockVecs registers wide), its float sums added to the thread's double partials.
constexpr int64_t kBlockVecs = 4;

template <typename T>
void reduce_nhwc(const T* g, const T* x, const T* scale, const T* shift, const T* mean,
                 double* sum_g, double* sum_gx, int64_t rows, int64_t c) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t block = kBlockVecs * Vec::size();
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkRows / std::max<int64_t>(c, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  ChannelPartials partials(c);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    double* mine = partials.mine();
    const Vec zero(T(0));
    alignas(64) T out_a[kBlockVecs * Vec::size()], out_b[kBlockVecs * Vec::size()];
    for (int64_t k = begin; k < end; ++k) {
      const int64_t r0 = k * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
      for (int64_t c0 = 0; c0 < c; c0 += block) {
        const int64_t width = std::min(block, c - c0);
        const int64_t nvec = (width + Vec::size() - 1) / Vec::size();
        Vec vs[kBlockVecs], vb[kBlockVecs], vm[kBlockVecs], a[kBlockVecs], b[kBlockVecs];
        int64_t lens[kBlockVecs];
        for (int64_t j = 0; j < nvec; ++j) {
          lens[j] = std::min<int64_t>(Vec::size(), width - j * Vec::size());
          const int64_t o = c0 + j * Vec::size();
          vs[j] = load_part(scale + o, lens[j]);
          vb[j] = load_part(shift + o, lens[j]);
          vm[j] = load_part(mean + o, lens[j]);
          a[j] = zero;
          b[j] = zero;
        }
        for (int64_t r = r0; r < r1; ++r) {
          const T* gr = g + r * c + c0;
          const T* xr = x + r * c + c0;
          for (int64_t j = 0; j < nvec; ++j) {
            const Vec xv = load_part(xr + j * Vec::size(), lens[j]);
            const Vec gm = Vec::blendv(zero, load_part(gr + j * Vec::size(), lens[j]),
                                       bn_pre(xv, vs[j], vb[j]) > zero);
            a[j] = a[j] + gm;
            b[j] = at::vec::fmadd(gm, xv - vm[j], b[j]);
          }
        }
        for (int64_t j = 0; j < nvec; ++j) {
          a[j].store(out_a + j * Vec::size());
          b[j].store(out_b + j * Vec::size());
        }
        for (int64_t i = 0; i < width; ++i) {
          mine[c0 + i] += static_cast<double>(out_a[i]);
          mine[c + c0 + i] += static_cast<double>(out_b[i]);
        }
      }
    }
  });
  partials.merge(sum_g, sum_gx);
}

// grad_x = [z > 0] g k + x p + q over one run with constant s, b (for z) and k, p, q.
template <typename T>
void apply_run(const T* g, const T* x, T* out, int64_t len, T s, T b, T k, T p, T q) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), vs(s), vb(b), vk(k), vp(p), vq(q);
  for (int64_t i = 0; i < len; i += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), len - i);
    const Vec xv = load_part(x + i, n);
    const Vec gm = Vec::blendv(zero, load_part(g + i, n), bn_pre(xv, vs, vb) > zero);
    store_part(at::vec::fmadd(gm, vk, at::vec::fmadd(xv, vp, vq)), out + i, n);
  }
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
                                    const at::Tensor& scale, const at::Tensor& shift,
                                    const at::Tensor& mean, at::Tensor& sum_g, at::Tensor& sum_gx,
                                    bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_relu_backward_reduce", [&] {
    const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    const scalar_t* bp = shift.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    double* a = sum_g.mutable_data_ptr<double>();
    double* b = sum_gx.mutable_data_ptr<double>();
    if (channels_last) reduce_nhwc<scalar_t>(gp, xp, sp, bp, mp, a, b, n * plane, c);
    else reduce_nchw<scalar_t>(gp, xp, sp, bp, mp, a, b, n, c, plane);
  });
}

void bn_relu_backward_apply_kernel(const at::Tensor& grad_y, const at::Tensor& x,
                                   const at::Tensor& scale, const at::Tensor& shift,
                                   const at::Tensor& k, const at::Tensor& p, const at::Tensor& q,
                                   at::Tensor& grad_x, bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_relu_backward_apply", [&] {
    using T = scalar_t;
    using Vec = at::vec::Vectorized<T>;
    const T* gp = grad_y.const_data_ptr<T>();
    const T* xp = x.const_data_ptr<T>();
    const T* sp = scale.const_data_ptr<T>();
    const T* bp = shift.const_data_ptr<T>();
    const T* kp = k.const_data_ptr<T>();
    const T* pp = p.const_data_ptr<T>();
    const T* qp = q.const_data_ptr<T>();
    T* op = grad_x.mutable_data_ptr<T>();
    if (channels_last) {
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(c, 1));
      at::parallel_for(0, n * plane, grain, [&](int64_t begin, int64_t end) {
        const Vec zero(T(0));
        for (int64_t r = begin; r < end; ++r) {
          const int64_t o = r * c;
          for (int64_t i = 0; i < c; i += Vec::size()) {
            const int64_t len = std::min<int64_t>(Vec::size(), c - i);
            const Vec xv = load_part(xp + o + i, len);
            const Vec z = bn_pre(xv, load_part(sp + i, len), load_part(bp + i, len));
            const Vec gm = Vec::blendv(zero, load_part(gp + o + i, len), z > zero);
            const Vec rest = at::vec::fmadd(xv, load_part(pp + i, len), load_part(qp + i, len));
            store_part(at::vec::fmadd(gm, load_part(kp + i, len), rest), op + o + i, len);
          }
        }
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1));
      at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
        for (int64_t pl = begin; pl < end; ++pl) {
          const int64_t ch = pl % c, o = pl * plane;
          apply_run(gp + o, xp + o, op + o, plane, sp[ch], bp[ch], kp[ch], pp[ch], qp[ch]);
        }
      });
    }
  });
}

}  // namespace transfusion::cpu::CPU_CAPABILITY
