// Plain C++ convolution loops for any dtype and layout: the float64 depthwise path, and
// the direct engine's path for shapes whose stride-phase planes would not pay (a stride
// or padding that dwarfs the image, conv_planes.h): they read the arrays in place and
// need no workspace, so any valid geometry costs only its taps.
//
// Loop order is tap-outer (c, i, j), pixel-inner: the innermost loop walks one output
// row and one input row with a fixed stride, which compilers vectorise for stride 1.
// The range of output columns whose input column falls inside the image is computed
// once per tap (tap_range), so the inner loop has no bounds tests.
#pragma once
#include <algorithm>
#include <cstdint>

#include "conv_geometry.h"
#include "conv_layout.h"
#include "thread_pool.h"

namespace convkit {

// Output indices o in [lo, hi) with 0 <= o*s - p + t < n.
inline void tap_range(std::int64_t n, std::int64_t s, std::int64_t p, std::int64_t t,
                      std::int64_t out, std::int64_t& lo, std::int64_t& hi) {
  std::int64_t off = t - p;  // input index = o*s + off
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = off >= n ? 0 : (n - 1 - off) / s + 1;
  hi = std::min(hi, out);
  if (lo > hi) lo = hi;
}

// Calls fn(i, j, oh, ow0, ow1, ih, c_off) for every tap (i, j) and output row oh whose
// input row ih = oh*sh - pt + i*dh is inside the image; output columns [ow0, ow1) read
// input columns ow*sw + c_off, all inside the image too.
template <typename Fn>
void for_each_tap_row(const ConvGeom& g, const Fn& fn) {
  for (std::int64_t i = 0; i < g.kh; ++i) {
    std::int64_t oh0, oh1;
    tap_range(g.H, g.sh, g.pt, i * g.dh, g.OH, oh0, oh1);
    for (std::int64_t j = 0; j < g.kw; ++j) {
      std::int64_t ow0, ow1;
      tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, ow0, ow1);
      for (std::int64_t oh = oh0; oh < oh1; ++oh) fn(i, j, oh, ow0, ow1, oh * g.sh - g.pt + i * g.dh, j * g.dw - g.pl);
    }
  }
}

// One task per (n, k) output plane: each task owns the elements it writes.
template <typename T>
void conv2d_forward_loops(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y) {
  const ActStrides xs = act_strides(layout, g.C, g.H, g.W), ys = act_strides(layout, g.K, g.OH, g.OW);
  const std::int64_t Cg = g.Cg(), Kg = g.Kg();
  parallel_for(g.N * g.K, [&](std::int64_t task) {
    const std::int64_t n = task / g.K, k = task % g.K, c0 = (k / Kg) * Cg;
    T* out = y + n * ys.n + k * ys.c;
    for (std::int64_t oh = 0; oh < g.OH; ++oh)
      for (std::int64_t ow = 0; ow < g.OW; ++ow) out[oh * ys.h + ow * ys.w] = bias ? bias[k] : T(0);
    for (std::int64_t c = 0; c < Cg; ++c) {
      const T* in = x + n * xs.n + (c0 + c) * xs.c;
      const T* wk = w + (k * Cg + c) * g.kh * g.kw;
      for_each_tap_row(g, [&](std::int64_t i, std::int64_t j, std::int64_t oh, std::int64_t ow0, std::int64_t ow1,
                              std::int64_t ih, std::int64_t c_off) {
        const T wv = wk[i * g.kw + j];
        const T* row = in + ih * xs.h;
        T* orow = out + oh * ys.h;
        for (std::int64_t ow = ow0; ow < ow1; ++ow) orow[ow * ys.w] += wv * row[(ow * g.sw + c_off) * xs.w];
      });
    }
    if (relu)
      for (std::int64_t oh = 0; oh < g.OH; ++oh)
        for (std::int64_t ow = 0; ow < g.OW; ++ow) {
          T& v = out[oh * ys.h + ow * ys.w];
          v = v > T(0) || v != v ? v : T(0);
        }
  });
}

// One task per (n, c) input plane: each task owns the elements it writes.
template <typename T>
void conv2d_grad_input_loops(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx) {
  const ActStrides xs = act_strides(layout, g.C, g.H, g.W), ys = act_strides(layout, g.K, g.OH, g.OW);
  const std::int64_t Cg = g.Cg(), Kg = g.Kg();
  parallel_for(g.N * g.C, [&](std::int64_t task) {
    const std::int64_t n = task / g.C, c = task % g.C, grp = c / Cg, cl = c % Cg;
    T* out = gx + n * xs.n + c * xs.c;
    for (std::int64_t ih = 0; ih < g.H; ++ih)
      for (std::int64_t iw = 0; iw < g.W; ++iw) out[ih * xs.h + iw * xs.w] = T(0);
    for (std::int64_t kl = 0; kl < Kg; ++kl) {
      const std::int64_t k = grp * Kg + kl;
      const T* go = gy + n * ys.n + k * ys.c;
      const T* wk = w + (k * Cg + cl) * g.kh * g.kw;
      for_each_tap_row(g, [&](std::int64_t i, std::int64_t j, std::int64_t oh, std::int64_t ow0, std::int64_t ow1,
                              std::int64_t ih, std::int64_t c_off) {
        const T wv = wk[i * g.kw + j];
        T* row = out + ih * xs.h;
        const T* grow = go + oh * ys.h;
        for (std::int64_t ow = ow0; ow < ow1; ++ow) row[(ow * g.sw + c_off) * xs.w] += wv * grow[ow * ys.w];
      });
    }
  });
}

// One task per output channel k: the batch is summed inside the task in a fixed order,
// so grad-weight is deterministic without atomics.
template <typename T>
void conv2d_grad_weight_loops(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw) {
  const ActStrides xs = act_strides(layout, g.C, g.H, g.W), ys = act_strides(layout, g.K, g.OH, g.OW);
  const std::int64_t Cg = g.Cg(), Kg = g.Kg();
  parallel_for(g.K, [&](std::int64_t k) {
    const std::int64_t c0 = (k / Kg) * Cg;
    T* gk = gw + k * Cg * g.kh * g.kw;
    std::fill(gk, gk + Cg * g.kh * g.kw, T(0));
    for (std::int64_t c = 0; c < Cg; ++c) {
      T* gkc = gk + c * g.kh * g.kw;
      for (std::int64_t n = 0; n < g.N; ++n) {
        const T* in = x + n * xs.n + (c0 + c) * xs.c;
        const T* go = gy + n * ys.n + k * ys.c;
        for_each_tap_row(g, [&](std::int64_t i, std::int64_t j, std::int64_t oh, std::int64_t ow0, std::int64_t ow1,
                                std::int64_t ih, std::int64_t c_off) {
          const T* row = in + ih * xs.h;
          const T* grow = go + oh * ys.h;
          T acc = 0;
          for (std::int64_t ow = ow0; ow < ow1; ++ow) acc += grow[ow * ys.w] * row[(ow * g.sw + c_off) * xs.w];
          gkc[i * g.kw + j] += acc;
        });
      }
    }
  });
}

}  // namespace convkit
