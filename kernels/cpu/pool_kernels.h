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
//   V max(V best, V v) = v > best ? v : best (so ties and a NaN v keep best);
//   M gt(V v, V best), eq(V, V) (false for NaN), or_m, and_m, bool any_nan(V);
//   V select(M, V a, V b), I select_i(M, I a, I b) = m ? a : b;
//   I set1_i(int64), add_i(I, I), mul_i(I, int64), iota_i(step) = lanes l*step;
//   M lt_i(I, I), eq_i(I, I); I load_i(const R*), store_i(R*, I), load_strided_i<S>(const R*,
//   I offsets) on int32 buffers (R); store_idx(int64*, I);
//   store_spread2(T* p, V v): p[2l] = v[l], p[2l + 1] = 0 (2*width values).
// Scalar<T> below is the one-lane vector: the scalar kernels, the float64 path, and the
// parts of the SIMD kernels narrower than a vector, computed by the very same code.
//
// Memory: every kernel reads its input once, in order, and writes each output once. NCHW
// windows are computed separably a row at a time: a vertical pass over the kernel rows,
// contiguous along W, into a row buffer padded on both sides (so no column is an edge),
// then the horizontal pass over that buffer, stride 2 by loading two vectors and
// deinterleaving, other strides by gathers. NHWC kernels vectorise along C.
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
  static V max(V best, V v) { return v > best ? v : best; }
  static M gt(V v, V best) { return v > best; }
  static M eq(V a, V b) { return a == b; }
  static M or_m(M a, M b) { return a | b; }
  static M and_m(M a, M b) { return a & b; }
  static bool any_nan(V v) { return std::isnan(v); }
  static V select(M m, V a, V b) { return m ? a : b; }
  static I select_i(M m, I a, I b) { return m ? a : b; }
  static M lt_i(I a, I b) { return a < b; }
  static M eq_i(I a, I b) { return a == b; }
  static I mul_i(I a, int64_t b) { return a * b; }
  static void store_spread2(T* p, V v) {
    p[0] = v;
    p[1] = T(0);
  }
  template <typename R>
  static I load_i(const R* p) { return *p; }
  template <typename R>
  static void store_i(R* p, I v) { *p = static_cast<R>(v); }
  template <int S, typename R>
  static I load_strided_i(const R* p, I) { return *p; }
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
// reference's order), and the first NaN, once met, stays.
//
// One lane (the scalar kernels, channel tails narrower than a vector, and the recomputed
// NaN cases) applies that rule exactly, without branches (data-dependent branches
// mispredict half the time on real data). Full vectors apply it
// as if there were no NaNs: best = max(best, v) is a 2-cycle dependency chain a tap and
// the index blend hangs off it (v > best), where the exact rule's chain (two compares
// and a blend) is 3x longer. A running sum of the taps detects NaNs in one add a tap
// (NaN in, NaN out; +inf and -inf together also give NaN, which merely costs time): a
// vector whose sum is NaN is recomputed lane by lane with the exact rule (inexact()).
//
// Average: the window's sum times 1/divisor, the divisor factored into a row and a column
// part (or divisor_override), as the operator precomputes them in inv_h / inv_w.
//
// Both are written once per vector type in Reductions<Vec>, whose names (T, V, I) they
// share, and reached as Family::Op<Vec> (Family = Max<kIdx> or Avg) by the kernels.
template <class Vec>
struct Reductions {
  using T = typename Vec::T;
  using V = typename Vec::V;
  using I = typename Vec::I;

  template <bool kIdx>
  struct Max {
    struct Acc {
      V best;
      I idx;
      V probe;  // the sum of the taps: NaN if one was
    };
    T* y;
    int64_t* idx;
    static Acc init(V v, I i) { return {v, i, v}; }
    static void step(Acc& a, V v, I i) {
      if constexpr (Vec::width == 1) {
        const bool take = ((v > a.best) | (v != v)) & (a.best == a.best);
        a.best = take ? v : a.best;
        if constexpr (kIdx) a.idx = take ? i : a.idx;
      } else {
        if constexpr (kIdx) a.idx = Vec::select_i(Vec::gt(v, a.best), i, a.idx);
        a.best = Vec::max(a.best, v);
        a.probe = Vec::add(a.probe, v);
      }
    }
    // True when these lanes must be recomputed one by one (they may have met a NaN).
    static bool inexact(const Acc& a) { return Vec::width > 1 && Vec::any_nan(a.probe); }
    static V scale(const PoolArrays<T>&, int64_t, int64_t) { return Vec::zero(); }
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

  struct Avg {
    struct Acc {
      V sum;
    };
    T* y;
    int64_t* idx;  // unused
    static Acc init(V, I) { return {Vec::zero()}; }
    static void step(Acc& a, V v, I) { a.sum = Vec::add(a.sum, v); }
    static bool inexact(const Acc&) { return false; }
    static V scale(const PoolArrays<T>& a, int64_t oh, int64_t ow) { return Vec::set1(a.inv_h[oh] * a.inv_w[ow]); }
    void store(const Acc& a, int64_t off, V scale) const { Vec::store(y + off, Vec::mul(a.sum, scale)); }
    void store_empty(int64_t off) const { y[off] = T(0); }  // unreachable: padding <= kernel/2
  };
};

template <bool kIdx>
struct Max {
  template <class Vec>
  using Op = typename Reductions<Vec>::template Max<kIdx>;
};

struct Avg {
  template <class Vec>
  using Op = typename Reductions<Vec>::Avg;
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

// ----------------------------------------------------------------------- NCHW, separable
// Output rows [r0, r1) of one plane. For each output row, the vertical pass reduces the
// kernel rows that lie in the input into `cells` (cell b = input column b - pw), then the
// horizontal pass reduces kw cells at stride sw into each output. The padding cells are
// set once: no output column is an edge, every vector is a full one.
//
// Max with indices: a cell keeps its maximum and the first kernel row holding it; the
// horizontal pass, scanning columns left to right, takes a later cell when it is larger,
// or equal from an earlier row: that is the first maximum in row-major order. Padding
// cells are -inf from row kPadRow, which loses every tie, so -inf inputs are found and a
// window of padding only (dilation) gets index -1. A running sum of the vertical taps
// detects NaNs (NaN in, NaN out; +inf with -inf also gives NaN, which merely costs time):
// an output row that meets one is computed with the exact one-lane rule instead.
constexpr int32_t kPadRow = std::numeric_limits<int32_t>::max();

// Cells of two rows, used alternately: the vertical pass fills one while the horizontal
// pass reads the other, so a cell is read well after it was stored (a load that spans
// two recent stores cannot be forwarded from the store buffer and stalls). Values, and
// (max with indices) kernel rows; R is int32 in the SIMD kernels (planes < 2^31
// elements) and int64 in the scalar ones.
template <typename T, typename R>
struct RowCells {
  RowCells(const PoolGeom& g, T pad, bool rows) {
    const int64_t reach = (g.OW - 1) * g.sw + (g.kw - 1) * g.dw + 1;  // cells the windows touch
    len_ = reach > g.pw + g.W ? reach : g.pw + g.W;
    mem_ = std::malloc(2 * len_ * (sizeof(T) + (rows ? sizeof(R) : 0)));
    if (!mem_) throw std::bad_alloc();
    val_ = static_cast<T*>(mem_);
    row_ = rows ? reinterpret_cast<R*>(val_ + 2 * len_) : nullptr;
    for (int64_t b = 0; b < 2 * len_; ++b) {  // the padding; the input's cells are overwritten
      val_[b] = pad;
      if (row_) row_[b] = kPadRow;
    }
  }
  ~RowCells() { std::free(mem_); }
  RowCells(const RowCells&) = delete;
  RowCells& operator=(const RowCells&) = delete;
  T* val(int64_t oh) const { return val_ + (oh & 1) * len_; }  // the buffer of output row oh
  R* row(int64_t oh) const { return row_ ? row_ + (oh & 1) * len_ : nullptr; }

 private:
  int64_t len_;
  void* mem_;
  T* val_;
  R* row_;
};

// Runs vertical(oh) one output row ahead of horizontal(oh), over rows [r0, r1).
template <class Vertical, class Horizontal>
inline void pipeline_rows(int64_t r0, int64_t r1, Vertical&& vertical, Horizontal&& horizontal) {
  if (r0 < r1) vertical(r0);
  for (int64_t oh = r0; oh < r1; ++oh) {
    if (oh + 1 < r1) vertical(oh + 1);
    horizontal(oh);
  }
}

template <class Vec>
using RowIndex = typename std::conditional<(Vec::width > 1), int32_t, int64_t>::type;

// The exact one-lane rule for output (oh, ow), straight from x (edges clipped).
template <typename T, class Op>
void exact_window(const PoolGeom& g, const T* x, const Op& op, int64_t oh, int64_t ow) {
  using Vx = Scalar<T>;
  const Range rows = valid_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh), cols = valid_taps(ow, g.W, g.kw, g.sw, g.pw, g.dw);
  if (rows.empty() || cols.empty()) return op.store_empty(oh * g.OW + ow);
  const Walk w{(oh * g.sh - g.ph) * g.W + ow * g.sw - g.pw, g.dh * g.W, g.dw, 1, 0, 0, rows, cols};
  typename Op::Acc acc[1];
  reduce_windows<Vx, Op, 1, 1>(acc, x, w, 0);
  op.store(acc[0], oh * g.OW + ow, Vx::zero());
}

// The two passes. Sizes come by value and loops read only locals: a vector store may
// alias anything, so a loop reading sizes through a pointer would reload them every tap.
//
// Vertical: cells[q] = the reduction of x[(ih0 + i*dh)*W + q] over rows i < n, for q < W,
// 4 vectors at a time (4 independent chains, a quarter of the loop overhead). Max also
// keeps the first row holding each maximum, and returns whether a NaN was met.
template <class Vec, bool kMax, bool kIdx, typename R>
bool vertical(const typename Vec::T* x, int64_t W, int64_t ih0, int64_t n, int64_t dh, typename Vec::T* cells,
              R* rows) {
  bool nan = false;
  sweep<Vec, 4>(0, W, [&, x, W, ih0, n, dh, cells, rows](auto tag, auto u, int64_t q) {
    using Vx = typename decltype(tag)::type;
    constexpr int U = decltype(u)::value, w = Vx::width;
    const typename Vx::T* p = x + ih0 * W + q;
    typename Vx::V acc[U], probe[U];
    typename Vx::I row[U];
    for (int k = 0; k < U; ++k) {
      acc[k] = probe[k] = Vx::load(p + k * w);
      row[k] = Vx::set1_i(ih0);
    }
    for (int64_t i = 1; i < n; ++i) {
      p += dh * W;
      const auto r = Vx::set1_i(ih0 + i * dh);
      for (int k = 0; k < U; ++k) {
        const auto v = Vx::load(p + k * w);
        if constexpr (kMax) {
          if constexpr (kIdx) row[k] = Vx::select_i(Vx::gt(v, acc[k]), r, row[k]);
          acc[k] = Vx::max(acc[k], v);
          probe[k] = Vx::add(probe[k], v);
        } else {
          acc[k] = Vx::add(acc[k], v);
        }
      }
    }
    for (int k = 0; k < U; ++k) {
      Vx::store(cells + q + k * w, acc[k]);
      if constexpr (kIdx) Vx::store_i(rows + q + k * w, row[k]);
      if (kMax && k > 0) probe[0] = Vx::add(probe[0], probe[k]);  // one check for the block
    }
    if constexpr (kMax) nan |= Vx::any_nan(probe[0]);
  });
  return nan;
}

// Horizontal: y[ow] = the reduction of cells[ow*sw + j*dw] over taps j < kw, for ow < OW
// (times the average's factors). Max with indices takes a later tap when it is larger, or
// equal from an earlier row; the index is then row*W + its column, -1 for padding only.
template <class Vec, bool kMax, bool kIdx, int S, typename R>
void horizontal(const typename Vec::T* cells, const R* rows, int64_t OW, int64_t kw, int64_t sw, int64_t dw,
                int64_t pw, int64_t W, typename Vec::T* y, int64_t* idx, typename Vec::T inv_h,
                const typename Vec::T* inv_w) {
  sweep<Vec, 2>(0, OW, [&, cells, rows, kw, sw, dw, pw, W, y, idx, inv_h, inv_w](auto tag, auto u, int64_t ow) {
    using Vx = typename decltype(tag)::type;
    constexpr int U = decltype(u)::value, w = Vx::width;
    const auto lanes = Vx::iota_i(sw);
    const typename Vx::T* c = cells + ow * sw;
    typename Vx::V acc[U];
    typename Vx::I row[U], col[U];
    for (int k = 0; k < U; ++k) {
      acc[k] = Vx::template load_strided<S>(c + k * w * sw, lanes);
      if constexpr (kIdx) {
        row[k] = Vx::template load_strided_i<S>(rows + ow * sw + k * w * sw, lanes);
        col[k] = Vx::add_i(lanes, Vx::set1_i((ow + k * w) * sw - pw));
      }
    }
    for (int64_t j = 1; j < kw; ++j) {
      for (int k = 0; k < U; ++k) {
        const int64_t at = (ow + k * w) * sw + j * dw;
        const auto v = Vx::template load_strided<S>(cells + at, lanes);
        if constexpr (!kMax) {
          acc[k] = Vx::add(acc[k], v);
        } else if constexpr (!kIdx) {
          acc[k] = Vx::max(acc[k], v);
        } else {
          const auto r = Vx::template load_strided_i<S>(rows + at, lanes);
          const auto take = Vx::or_m(Vx::gt(v, acc[k]), Vx::and_m(Vx::eq(v, acc[k]), Vx::lt_i(r, row[k])));
          acc[k] = Vx::select(take, v, acc[k]);
          row[k] = Vx::select_i(take, r, row[k]);
          col[k] = Vx::select_i(take, Vx::add_i(lanes, Vx::set1_i(at - pw)), col[k]);
        }
      }
    }
    for (int k = 0; k < U; ++k) {
      const int64_t o = ow + k * w;
      if constexpr (!kMax) acc[k] = Vx::mul(acc[k], Vx::mul(Vx::set1(inv_h), Vx::load(inv_w + o)));
      Vx::store(y + o, acc[k]);
      if constexpr (kIdx) {
        const auto pad = Vx::eq_i(row[k], Vx::set1_i(kPadRow));
        Vx::store_idx(idx + o, Vx::select_i(pad, Vx::set1_i(-1), Vx::add_i(Vx::mul_i(row[k], W), col[k])));
      }
    }
  });
}

// Max (kMax) or average pooling of output rows [r0, r1) of one plane.
template <class Vec, bool kMax, bool kIdx, int S>
void nchw_windows(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  using R = RowIndex<Vec>;
  const int64_t out_plane = t.plane * g.OH * g.OW;
  const T* x = a.in + t.plane * g.H * g.W;
  T* y = a.out + out_plane;
  int64_t* idx = kIdx ? a.idx + out_plane : nullptr;
  RowCells<T, R> cells(g, kMax ? -std::numeric_limits<T>::infinity() : T(0), kIdx);
  enum State : char { ok, inexact };
  State state[2];
  auto rows_pass = [&](int64_t oh) {
    const Range rows = valid_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh);  // never empty for the average
    const bool nan = !rows.empty() && vertical<Vec, kMax, kIdx>(x, g.W, oh * g.sh - g.ph + rows.lo * g.dh,
                                                                rows.hi - rows.lo, g.dh, cells.val(oh) + g.pw,
                                                                kIdx ? cells.row(oh) + g.pw : nullptr);
    state[oh & 1] = rows.empty() || nan ? inexact : ok;  // only padding rows (dilation), or a NaN
  };
  auto columns_pass = [&](int64_t oh) {
    if (state[oh & 1] == ok) {
      horizontal<Vec, kMax, kIdx, S>(cells.val(oh), cells.row(oh), g.OW, g.kw, g.sw, g.dw, g.pw, g.W,
                                     y + oh * g.OW, kIdx ? idx + oh * g.OW : nullptr, kMax ? T(0) : a.inv_h[oh],
                                     a.inv_w);
    } else if constexpr (kMax) {
      const typename Max<kIdx>::template Op<Scalar<T>> exact{y, idx};
      for (int64_t ow = 0; ow < g.OW; ++ow) exact_window(g, x, exact, oh, ow);
    }
  };
  pipeline_rows(t.r0, t.r1, rows_pass, columns_pass);
}

template <class Vec, bool kMax, bool kIdx>
void nchw_windows_any_stride(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  switch (g.sw) {
    case 1: return nchw_windows<Vec, kMax, kIdx, 1>(g, a, t);
    case 2: return nchw_windows<Vec, kMax, kIdx, 2>(g, a, t);
    default: return nchw_windows<Vec, kMax, kIdx, 0>(g, a, t);  // gathers
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
      // Channels from c: U vectors of them, or one with one lane.
      auto channels = [&](auto& self, auto tag, auto u, int64_t c) -> void {
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
        const auto scale = Op::scale(a, oh, ow);
        for (int k = 0; k < U; ++k) {
          const int64_t ck = c + k * Vx::width;
          if (!Op::inexact(acc[k])) op.store(acc[k], out + ck, scale);
          else for (int l = 0; l < Vx::width; ++l) self(self, Tag<Scalar<T>>{}, Int<1>{}, ck + l);
        }
      };
      sweep<Vec, 4>(t.c0, t.c1, [&](auto tag, auto u, int64_t c) { channels(channels, tag, u, c); });
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
      // value, ties going to the smallest index: the first in scan order. A plane with
      // a NaN is scanned again with the exact one-lane rule.
      const auto iota = Vec::iota_i(1);
      typename Op::Acc acc = Op::init(Vec::load(x), iota);
      for (p = w; p + w <= n; p += w) Op::step(acc, Vec::load(x + p), Vec::add_i(iota, Vec::set1_i(p)));
      if (Op::inexact(acc)) {
        p = 0;
      } else {
        T vals[w];
        int64_t ids[w];
        Vec::store(vals, acc.best);
        Vec::store_idx(ids, acc.idx);
        best = {vals[0], ids[0], false};
        for (int l = 1; l < w; ++l)
          if (vals[l] > best.best || (vals[l] == best.best && ids[l] < best.idx)) best = {vals[l], ids[l], false};
      }
    }
    for (; p < n; ++p) Op1::step(best, x[p], p);  // the tail (later than every lane), or all
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

// Its backward: each plane filled with its grad_output times 1/divisor.
template <class Vec>
void global_avg_backward_nchw(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  const int64_t n = g.H * g.W;
  for (int64_t plane = t.r0; plane < t.r1; ++plane) {
    const auto fill = a.in[plane] * a.inv_h[0] * a.inv_w[0];
    sweep<Vec, 4>(0, n, [&](auto tag, auto u, int64_t p) {
      using Vx = typename decltype(tag)::type;
      for (int k = 0; k < decltype(u)::value; ++k) Vx::store(a.out + plane * n + p + k * Vx::width, Vx::set1(fill));
    });
  }
}

// ------------------------------------------------------------------ average backward
// Gradient of input row ih: t[ow] = the rows of grad_output whose windows cover ih, each
// times its row factor, times the column factor; then spread along W: t placed at stride
// sw into a row z of zeros, z[ow*sw + kw - 1] = t[ow] (the window of ow starts at column
// ow*sw - pw), and gx[iw] = z[iw + pw + kw - 1 - j] summed over j < kw. Strides 1 and 2
// write z with vector stores (stride 2 interleaving zeros); other strides place lanes
// one by one. Task rows are input rows; grad_input is written once, in order. z is
// built one row ahead of its reads (two buffers): a vector load spanning recent stores
// of another size cannot be forwarded and would wait for them.
template <class Vec, int S>
void avg_backward_rows(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  const int64_t OW = g.OW, W = g.W, kw = g.kw, sw = g.sw, pw = g.pw;
  const T* gy = a.in + t.plane * g.OH * OW;
  T* gx = a.out + t.plane * g.H * W;
  // z covers every window start (OW*sw + kw - 1 cells) and every read (W + pw + kw - 1)
  const int64_t reach = OW * sw + kw - 1 + 2 * Vec::width, zlen = reach > W + pw + kw - 1 ? reach : W + pw + kw - 1;
  T small[2048];  // most planes: no allocation per call (small planes make many calls)
  T* z0 = 2 * zlen <= 2048 ? small : static_cast<T*>(std::malloc(sizeof(T) * 2 * zlen));
  if (!z0) throw std::bad_alloc();
  for (int64_t b = 0; b < 2 * zlen; ++b) z0[b] = T(0);  // cells no row writes stay zero
  auto z = [&](int64_t ih) { return z0 + (ih & 1) * zlen; };
  auto spread = [&, gy, OW, kw, sw](int64_t ih) {
    const Range ohs = a.cover_h[ih];
    T* zr = z(ih) + kw - 1;
    sweep<Vec, 1>(0, OW, [&, zr, ohs](auto tag, auto, int64_t ow) {
      using Vx = typename decltype(tag)::type;
      auto acc = Vx::zero();
      for (int64_t oh = ohs.lo; oh < ohs.hi; ++oh) acc = Vx::fmadd(Vx::load(gy + oh * OW + ow), Vx::set1(a.inv_h[oh]), acc);
      acc = Vx::mul(acc, Vx::load(a.inv_w + ow));
      if constexpr (S == 1) {
        Vx::store(zr + ow, acc);
      } else if constexpr (S == 2) {
        Vx::store_spread2(zr + 2 * ow, acc);
      } else {
        T lanes[Vx::width];
        Vx::store(lanes, acc);
        for (int l = 0; l < Vx::width; ++l) zr[(ow + l) * sw] = lanes[l];
      }
    });
  };
  auto sum = [&, W, kw, pw](int64_t ih) {
    const T* zr = z(ih) + pw + kw - 1;
    T* out = gx + ih * W;
    sweep<Vec, 1>(0, W, [&, zr, out](auto tag, auto, int64_t iw) {
      using Vx = typename decltype(tag)::type;
      auto acc = Vx::load(zr + iw);
      for (int64_t j = 1; j < kw; ++j) acc = Vx::add(acc, Vx::load(zr + iw - j));
      Vx::store(out + iw, acc);
    });
  };
  pipeline_rows(t.r0, t.r1, spread, sum);
  if (z0 != small) std::free(z0);
}

template <class Vec>
void avg_backward_nchw(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  switch (g.sw) {
    case 1: return avg_backward_rows<Vec, 1>(g, a, t);
    case 2: return avg_backward_rows<Vec, 2>(g, a, t);
    default: return avg_backward_rows<Vec, 0>(g, a, t);
  }
}

// NHWC: each input pixel sums the grad_output vectors of the windows covering it, each
// times its factor; vectorised along C. Task: image, input rows, channels.
template <class Vec>
void avg_backward_nhwc(const PoolGeom& g, const PoolArrays<typename Vec::T>& a, const PoolTask& t) {
  using T = typename Vec::T;
  const int64_t C = g.C, OW = g.OW;
  const T* gy = a.in + t.plane * g.OH * OW * C;
  T* gx = a.out + t.plane * g.H * g.W * C;
  for (int64_t ih = t.r0; ih < t.r1; ++ih) {
    const Range ohs = a.cover_h[ih];
    for (int64_t iw = 0; iw < g.W; ++iw) {
      const Range ows = a.cover_w[iw];
      T* dst = gx + (ih * g.W + iw) * C;
      sweep<Vec, 4>(t.c0, t.c1, [&, C, OW, ohs, ows, gy, dst](auto tag, auto u, int64_t c) {
        using Vx = typename decltype(tag)::type;
        constexpr int U = decltype(u)::value;
        typename Vx::V acc[U];
        for (int k = 0; k < U; ++k) acc[k] = Vx::zero();
        for (int64_t oh = ohs.lo; oh < ohs.hi; ++oh) {
          for (int64_t ow = ows.lo; ow < ows.hi; ++ow) {
            const auto f = Vx::set1(a.inv_h[oh] * a.inv_w[ow]);
            const T* src = gy + (oh * OW + ow) * C + c;
            for (int k = 0; k < U; ++k) acc[k] = Vx::fmadd(Vx::load(src + k * Vx::width), f, acc[k]);
          }
        }
        for (int k = 0; k < U; ++k) Vx::store(dst + c + k * Vx::width, acc[k]);
      });
    }
  }
}

template <class Vec>
constexpr PoolKernels<typename Vec::T> pool_kernel_table() {
  return {&nchw_windows_any_stride<Vec, true, false>,
          &nchw_windows_any_stride<Vec, true, true>,
          &nchw_windows_any_stride<Vec, false, false>,
          &nhwc_windows<Vec, Max<false>>,
          &nhwc_windows<Vec, Max<true>>,
          &nhwc_windows<Vec, Avg>,
          &global_max_nchw<Vec, false>,
          &global_max_nchw<Vec, true>,
          &global_avg_nchw<Vec>,
          &global_avg_backward_nchw<Vec>,
          &avg_backward_nchw<Vec>,
          &avg_backward_nhwc<Vec>};
}

}  // namespace
}  // namespace convkit
