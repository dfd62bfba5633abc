// Pooling kernels, written once over a vector type and compiled once per instruction set.
//
// Each kernel file (f32_pool__avx512.cpp, f32_pool__avx2.cpp, pool__scalar.cpp) defines
// its vector type and includes this header, which fills a PoolKernels table from it.
// Everything here has internal linkage (anonymous namespace): the same templates are
// compiled with different ISA flags in different files, and must never be merged by the
// linker. For the same reason it uses no std:: templates that could be emitted out of line.
//
// A vector type `Vec` provides, for `width` lanes of T (float lanes, int32 index lanes):
//   V load(const T*), store(T*, V), set1(T), zero(), add, mul, fmadd(a, b, c) = a*b + c,
//   T reduce_add(V);
//   template <int S> V load_strided(const T* p, I offsets): lanes p[l*S]; S = 0: p[offsets[l]];
//   M take(V v, V best) = (v > best or v is NaN) and best is not NaN: the max-pool rule;
//   V select(M, V a, V b) / I select_i(M, I, I) = m ? a : b;
//   I set1_i(int64), add_i(I, I), iota_i(step) = lanes l*step; store_idx(int64*, I).
// Scalar<T> below is the one-lane vector: the scalar kernels, the float64 path, and the
// edges of the SIMD kernels, so an edge is computed by the very code of the interior.
//
// Memory: every kernel reads its input once, in order, and writes each output once. The
// NCHW window kernels vectorise along W (stride 2 by loading two vectors and
// deinterleaving, other strides by gathers), the NHWC ones along C; a plane's few input
// rows under one output row stay in L1 while all their taps are read.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>

#include "pool_kernel_table.h"

namespace convkit {
namespace {

using std::int64_t;

template <typename TT>
struct Scalar {
  using T = TT;
  using V = T;
  using I = int64_t;
  using M = bool;
  static constexpr int width = 1;
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  template <int S>
  static V load_strided(const T* p, I) { return *p; }
  static V set1(T v) { return v; }
  static V zero() { return T(0); }
  static V add(V a, V b) { return a + b; }
  static V mul(V a, V b) { return a * b; }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static T reduce_add(V v) { return v; }
  static M take(V v, V best) { return (v > best || std::isnan(v)) && !std::isnan(best); }
  static V select(M m, V a, V b) { return m ? a : b; }
  static I select_i(M m, I a, I b) { return m ? a : b; }
  static I set1_i(int64_t v) { return v; }
  static I add_i(I a, I b) { return a + b; }
  static I iota_i(int64_t) { return 0; }
  static void store_idx(int64_t* p, I i) { *p = i; }
};

template <class X>
struct Tag {
  using type = X;
};
template <int N>
using Int = std::integral_constant<int, N>;

// Covers [begin, end) with body(Tag<Vec>, Int<U>, x) on blocks of U vectors, then single
// vectors, the last one overlapping the one before: its outputs are written twice with
// the same values (every body is a pure function of its inputs, never an accumulation
// into its output). A range narrower than one vector goes element by element through
// body(Tag<Scalar<T>>, Int<1>, x).
template <class Vec, int U, class Body>
inline void sweep(int64_t begin, int64_t end, Body&& body) {
  constexpr int w = Vec::width;
  if (end - begin < w) {
    for (int64_t x = begin; x < end; ++x) body(Tag<Scalar<typename Vec::T>>{}, Int<1>{}, x);
    return;
  }
  int64_t x = begin;
  for (; x + U * w <= end; x += U * w) body(Tag<Vec>{}, Int<U>{}, x);
  for (; x + w <= end; x += w) body(Tag<Vec>{}, Int<1>{}, x);
  if (x < end) body(Tag<Vec>{}, Int<1>{}, end - w);
}

// --------------------------------------------------------------------- window reductions
// Max: the first maximum in scan order (kernel rows outer, columns inner: torch's and the
// reference's order), and the first NaN, once met, stays. Index lanes are only computed
// when they are stored (kIdx), so the value-only kernel does 3 vector ops a tap.
template <bool kIdx>
struct Max {
  template <class Vec>
  struct Op {
    using T = typename Vec::T;
    using V = typename Vec::V;
    using I = typename Vec::I;
    struct Acc {
      V best;
      I idx;
    };
    T* y;
    int64_t* idx;
    static Acc init(V v, I i) { return {v, i}; }
    static void step(Acc& a, V v, I i) {
      const auto m = Vec::take(v, a.best);
      a.best = Vec::select(m, v, a.best);
      if constexpr (kIdx) a.idx = Vec::select_i(m, i, a.idx);
    }
    static V scale(const PoolArrays<T>&, int64_t, int64_t, bool) { return Vec::zero(); }
    void store(const Acc& a, int64_t off, V) const {
      Vec::store(y + off, a.best);
      if constexpr (kIdx) Vec::store_idx(idx + off, a.idx);
    }
    // A window with no input element in it (possible only with dilation): -inf, index -1.
    void store_empty(int64_t off) const {
      y[off] = -std::numeric_limits<T>::infinity();
      if constexpr (kIdx) idx[off] = -1;
    }
  };
};

// Average: the window's sum times 1/divisor, the divisor factored into a row and a column
// part (or divisor_override), as the operator precomputes them in inv_h / inv_w.
struct Avg {
  template <class Vec>
  struct Op {
    using T = typename Vec::T;
    using V = typename Vec::V;
    using I = typename Vec::I;
    struct Acc {
      V sum;
    };
    T* y;
    int64_t* idx;  // unused
    static Acc init(V, I) { return {Vec::zero()}; }
    static void step(Acc& a, V v, I) { a.sum = Vec::add(a.sum, v); }
    // The factor of output (oh, ow): along W (one column a lane) or one for all lanes.
    static V scale(const PoolArrays<T>& a, int64_t oh, int64_t ow, bool along_w) {
      return along_w ? Vec::mul(Vec::set1(a.inv_h[oh]), Vec::load(a.inv_w + ow))
                     : Vec::set1(a.inv_h[oh] * a.inv_w[ow]);
    }
    void store(const Acc& a, int64_t off, V scale) const { Vec::store(y + off, Vec::mul(a.sum, scale)); }
    void store_empty(int64_t off) const { y[off] = T(0); }  // unreachable: padding <= kernel/2
  };
};

// Which taps of U windows to visit, and where they are. Tap (i, j) of window u has the
// flat index origin + i*row_step + j*col_step + u*u_idx (+ the lane's offset) within its
// H*W plane, and is read at memory offset index*mem_scale + u*u_mem from the kernel's
// base pointer.
struct Walk {
  int64_t origin, row_step, col_step, mem_scale, u_mem, u_idx;
  Range rows, cols;
};

template <class Vx, class Op, int S, int U>
inline void reduce_windows(typename Op::Acc (&acc)[U], const typename Vx::T* x, const Walk& w,
                           typename Vx::I lanes) {
  const int64_t first = w.origin + w.rows.lo * w.row_step + w.cols.lo * w.col_step;
  for (int u = 0; u < U; ++u)
    acc[u] = Op::init(Vx::template load_strided<S>(x + first * w.mem_scale + u * w.u_mem, lanes),
                      Vx::add_i(lanes, Vx::set1_i(first + u * w.u_idx)));
  for (int64_t i = w.rows.lo; i < w.rows.hi; ++i) {
    for (int64_t j = w.cols.lo; j < w.cols.hi; ++j) {
      const int64_t tap = w.origin + i * w.row_step + j * w.col_step;
      for (int u = 0; u < U; ++u)
        Op::step(acc[u], Vx::template load_strided<S>(x + tap * w.mem_scale + u * w.u_mem, lanes),
                 Vx::add_i(lanes, Vx::set1_i(tap + u * w.u_idx)));
    }
  }
}

// NCHW: output rows [r0, r1) of one plane, vectorised along W. Interior columns (every
// tap in bounds) go through full vectors, two at a time for two independent dependency
// chains; the few edge columns through the same code with one lane and clipped taps.
template <class Vec, class Family, int S>
void nchw_windows(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  const int64_t out_plane = t.plane * g.OH * g.OW;
  const T* x = a.in + t.plane * g.H * g.W;
  T* y = a.out + out_plane;
  int64_t* idx = a.idx ? a.idx + out_plane : nullptr;
  const Range inner = interior(g.W, g.kw, g.sw, g.pw, g.dw, g.OW);
  for (int64_t oh = t.r0; oh < t.r1; ++oh) {
    const Range rows = valid_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh);
    const int64_t row0 = oh * g.sh - g.ph, out = oh * g.OW;
    if (rows.empty()) {  // only padding rows under this output row (dilation)
      const typename Family::template Op<Scalar<T>> op{y, idx};
      for (int64_t ow = 0; ow < g.OW; ++ow) op.store_empty(out + ow);
      continue;
    }
    auto windows = [&](auto tag, auto u, int64_t ow) {
      using Vx = typename decltype(tag)::type;
      using Op = typename Family::template Op<Vx>;
      constexpr int U = decltype(u)::value;
      const Op op{y, idx};
      const Range cols = Vx::width == 1 ? valid_taps(ow, g.W, g.kw, g.sw, g.pw, g.dw) : Range{0, g.kw};
      if (cols.empty()) return op.store_empty(out + ow);  // one lane: an edge column
      const Walk w{row0 * g.W + ow * g.sw - g.pw, g.dh * g.W, g.dw, 1, Vx::width * g.sw, Vx::width * g.sw, rows, cols};
      typename Op::Acc acc[U];
      reduce_windows<Vx, Op, S, U>(acc, x, w, Vx::iota_i(g.sw));
      for (int k = 0; k < U; ++k) {
        const int64_t o = ow + k * Vx::width;
        op.store(acc[k], out + o, Op::scale(a, oh, o, true));
      }
    };
    sweep<Vec, 2>(inner.lo, inner.hi, windows);
    for (int64_t ow = 0; ow < inner.lo; ++ow) windows(Tag<Scalar<T>>{}, Int<1>{}, ow);
    for (int64_t ow = inner.hi; ow < g.OW; ++ow) windows(Tag<Scalar<T>>{}, Int<1>{}, ow);
  }
}

template <class Vec, class Family>
void nchw_windows_any_stride(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  switch (g.sw) {
    case 1: return nchw_windows<Vec, Family, 1>(g, a, t);
    case 2: return nchw_windows<Vec, Family, 2>(g, a, t);
    default: return nchw_windows<Vec, Family, 0>(g, a, t);  // gathers
  }
}

// NHWC: output rows [r0, r1) of one image, channels [c0, c1), vectorised along C in
// blocks of 4 vectors (4 cache lines a tap: 4 independent chains, and the hardware
// prefetcher sees few long streams). Global NHWC pooling is this kernel too.
template <class Vec, class Family>
void nhwc_windows(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  const int64_t C = g.C, out_image = t.plane * g.OH * g.OW * C;
  const T* x = a.in + t.plane * g.H * g.W * C;
  T* y = a.out + out_image;
  int64_t* idx = a.idx ? a.idx + out_image : nullptr;
  for (int64_t oh = t.r0; oh < t.r1; ++oh) {
    const Range rows = valid_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const Range cols = valid_taps(ow, g.W, g.kw, g.sw, g.pw, g.dw);
      const int64_t out = (oh * g.OW + ow) * C;
      const int64_t origin = (oh * g.sh - g.ph) * g.W + ow * g.sw - g.pw;
      sweep<Vec, 4>(t.c0, t.c1, [&](auto tag, auto u, int64_t c) {
        using Vx = typename decltype(tag)::type;
        using Op = typename Family::template Op<Vx>;
        constexpr int U = decltype(u)::value;
        const Op op{y, idx};
        if (rows.empty() || cols.empty()) {
          for (int64_t k = 0; k < U * Vx::width; ++k) op.store_empty(out + c + k);
          return;
        }
        const Walk w{origin, g.dh * g.W, g.dw, C, Vx::width, 0, rows, cols};
        typename Op::Acc acc[U];
        reduce_windows<Vx, Op, 1, U>(acc, x + c, w, Vx::set1_i(0));
        const auto scale = Op::scale(a, oh, ow, false);
        for (int k = 0; k < U; ++k) op.store(acc[k], out + c + k * Vx::width, scale);
      });
    }
  }
}

// ---------------------------------------------------------------------- global, NCHW
// One window covers a whole plane: a reduction along one contiguous run of H*W values.
template <class Vec, bool kIdx>
void global_max_nchw(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  using Op = typename Max<kIdx>::template Op<Vec>;
  using Op1 = typename Max<kIdx>::template Op<Scalar<T>>;
  constexpr int w = Vec::width;
  const int64_t n = g.H * g.W;
  for (int64_t plane = t.r0; plane < t.r1; ++plane) {
    const T* x = a.in + plane * n;
    typename Op1::Acc best = Op1::init(x[0], 0);
    int64_t p = 0;
    if (n >= w) {
      // Lane l keeps the first maximum of x[l], x[l+w], ...; lanes are then merged by
      // value, ties and NaNs going to the smallest index: the first in scan order.
      const auto iota = Vec::iota_i(1);
      typename Op::Acc acc = Op::init(Vec::load(x), iota);
      for (p = w; p + w <= n; p += w) Op::step(acc, Vec::load(x + p), Vec::add_i(iota, Vec::set1_i(p)));
      T vals[w];
      int64_t ids[w];
      Vec::store(vals, acc.best);
      Vec::store_idx(ids, acc.idx);
      best = {vals[0], ids[0]};
      for (int l = 1; l < w; ++l) {
        const bool nan = std::isnan(vals[l]), best_nan = std::isnan(best.best);
        const bool earlier = !kIdx || ids[l] < best.idx;
        if (best_nan ? nan && earlier : nan || vals[l] > best.best || (vals[l] == best.best && earlier))
          best = {vals[l], ids[l]};
      }
    }
    for (; p < n; ++p) Op1::step(best, x[p], p);  // the tail: later than every lane
    const Op1 out{a.out, a.idx};
    out.store(best, plane, T(0));
  }
}

template <class Vec>
void global_avg_nchw(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  constexpr int w = Vec::width;
  const int64_t n = g.H * g.W;
  const T scale = a.inv_h[0] * a.inv_w[0];
  for (int64_t plane = t.r0; plane < t.r1; ++plane) {
    const T* x = a.in + plane * n;
    int64_t p = 0;
    T sum = T(0);
    if (n >= w) {
      typename Vec::V acc = Vec::zero();
      for (; p + w <= n; p += w) acc = Vec::add(acc, Vec::load(x + p));
      sum = Vec::reduce_add(acc);
    }
    for (; p < n; ++p) sum += x[p];
    a.out[plane] = sum * scale;
  }
}

// ------------------------------------------------------------------ average backward
// Gradient of input row ih = the rows of grad_output whose windows cover it, each times
// its row factor, then spread along W: placed at stride sw into a zeroed row z and summed
// over kw shifted reads of z. Every step is a contiguous vector sweep; grad_input is
// written once, in order. Task rows are input rows.
template <class Vec>
void avg_backward_nchw(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  const T* gy = a.in + t.plane * g.OH * g.OW;
  T* gx = a.out + t.plane * g.H * g.W;
  const int64_t zlen = g.W + g.pw + g.kw - 1;  // z[q + kw - 1]: the column-q share, q >= -(kw - 1)
  T* row = static_cast<T*>(std::malloc(sizeof(T) * (g.OW + zlen)));
  if (!row) throw std::bad_alloc();
  T* z = row + g.OW;
  for (int64_t ih = t.r0; ih < t.r1; ++ih) {
    const Range ohs = covering_outputs(ih, g.kh, g.sh, g.ph, g.OH);
    sweep<Vec, 1>(0, g.OW, [&](auto tag, auto, int64_t ow) {
      using Vx = typename decltype(tag)::type;
      auto acc = Vx::zero();
      for (int64_t oh = ohs.lo; oh < ohs.hi; ++oh) acc = Vx::fmadd(Vx::load(gy + oh * g.OW + ow), Vx::set1(a.inv_h[oh]), acc);
      Vx::store(row + ow, Vx::mul(acc, Vx::load(a.inv_w + ow)));
    });
    std::memset(z, 0, sizeof(T) * zlen);
    for (int64_t ow = 0; ow < g.OW && ow * g.sw + g.kw - 1 < zlen; ++ow) z[ow * g.sw + g.kw - 1] = row[ow];
    sweep<Vec, 1>(0, g.W, [&](auto tag, auto, int64_t iw) {
      using Vx = typename decltype(tag)::type;
      auto acc = Vx::zero();
      for (int64_t j = 0; j < g.kw; ++j) acc = Vx::add(acc, Vx::load(z + iw + g.pw + g.kw - 1 - j));
      Vx::store(gx + ih * g.W + iw, acc);
    });
  }
  std::free(row);
}

// NHWC: each input pixel sums the grad_output vectors of the windows covering it, each
// times its factor; vectorised along C. Task: image, input rows, channels.
template <class Vec>
void avg_backward_nhwc(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  const int64_t C = g.C;
  const T* gy = a.in + t.plane * g.OH * g.OW * C;
  T* gx = a.out + t.plane * g.H * g.W * C;
  for (int64_t ih = t.r0; ih < t.r1; ++ih) {
    const Range ohs = covering_outputs(ih, g.kh, g.sh, g.ph, g.OH);
    for (int64_t iw = 0; iw < g.W; ++iw) {
      const Range ows = covering_outputs(iw, g.kw, g.sw, g.pw, g.OW);
      sweep<Vec, 4>(t.c0, t.c1, [&](auto tag, auto u, int64_t c) {
        using Vx = typename decltype(tag)::type;
        constexpr int U = decltype(u)::value;
        typename Vx::V acc[U];
        for (int k = 0; k < U; ++k) acc[k] = Vx::zero();
        for (int64_t oh = ohs.lo; oh < ohs.hi; ++oh) {
          for (int64_t ow = ows.lo; ow < ows.hi; ++ow) {
            const auto f = Vx::set1(a.inv_h[oh] * a.inv_w[ow]);
            const T* src = gy + (oh * g.OW + ow) * C + c;
            for (int k = 0; k < U; ++k) acc[k] = Vx::fmadd(Vx::load(src + k * Vx::width), f, acc[k]);
          }
        }
        for (int k = 0; k < U; ++k) Vx::store(gx + (ih * g.W + iw) * C + c + k * Vx::width, acc[k]);
      });
    }
  }
}

template <class Vec>
constexpr PoolKernels<typename Vec::T> pool_kernel_table() {
  return {&nchw_windows_any_stride<Vec, Max<false>>,
          &nchw_windows_any_stride<Vec, Max<true>>,
          &nchw_windows_any_stride<Vec, Avg>,
          &nhwc_windows<Vec, Max<false>>,
          &nhwc_windows<Vec, Max<true>>,
          &nhwc_windows<Vec, Avg>,
          &global_max_nchw<Vec, false>,
          &global_max_nchw<Vec, true>,
          &global_avg_nchw<Vec>,
          &avg_backward_nchw<Vec>,
          &avg_backward_nhwc<Vec>};
}

}  // namespace
}  // namespace convkit
