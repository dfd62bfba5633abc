// Plain C++ convolution loops for any dtype: the portable path every SIMD kernel is
// measured against, and the float64 path ("float32 fast, float64 correct").
//
// Loop order is tap-outer (c, i, j), pixel-inner: the innermost loop walks one output
// row and one input row with a fixed stride, which compilers vectorise for stride 1.
// The range of output columns whose input column falls inside the image is computed
// once per tap (tap_range), so the inner loop has no bounds tests.
#pragma once
#include <algorithm>
#include <cstdint>

#include "conv_geometry.h"
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

template <typename T>
void conv2d_forward_loops(const ConvGeom& g, const T* x, const T* w, const T* bias, bool relu, T* y) {
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), HW = g.H * g.W, OHW = g.OH * g.OW;
  parallel_for(g.N * g.K, [&](std::int64_t task) {
    const std::int64_t n = task / g.K, k = task % g.K, c0 = (k / Kg) * Cg;
    T* out = y + task * OHW;
    std::fill(out, out + OHW, bias ? bias[k] : T(0));
    for (std::int64_t c = 0; c < Cg; ++c) {
      const T* in = x + (n * g.C + c0 + c) * HW;
      for (std::int64_t i = 0; i < g.kh; ++i) {
        std::int64_t oh0, oh1;
        tap_range(g.H, g.sh, g.pt, i * g.dh, g.OH, oh0, oh1);
        for (std::int64_t j = 0; j < g.kw; ++j) {
          std::int64_t ow0, ow1;
          tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, ow0, ow1);
          const T wv = w[((k * Cg + c) * g.kh + i) * g.kw + j];
          for (std::int64_t oh = oh0; oh < oh1; ++oh) {
            const T* row = in + (oh * g.sh - g.pt + i * g.dh) * g.W - g.pl + j * g.dw;
            T* orow = out + oh * g.OW;
            for (std::int64_t ow = ow0; ow < ow1; ++ow) orow[ow] += wv * row[ow * g.sw];
          }
        }
      }
    }
    if (relu)
      for (std::int64_t p = 0; p < OHW; ++p) out[p] = out[p] > T(0) || out[p] != out[p] ? out[p] : T(0);
  });
}

// One task per (n, c) input plane: each task owns the plane it writes.
template <typename T>
void conv2d_grad_input_loops(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), HW = g.H * g.W, OHW = g.OH * g.OW;
  parallel_for(g.N * g.C, [&](std::int64_t task) {
    const std::int64_t n = task / g.C, c = task % g.C, grp = c / Cg, cl = c % Cg;
    T* out = gx + task * HW;
    std::fill(out, out + HW, T(0));
    for (std::int64_t kl = 0; kl < Kg; ++kl) {
      const std::int64_t k = grp * Kg + kl;
      const T* go = gy + (n * g.K + k) * OHW;
      for (std::int64_t i = 0; i < g.kh; ++i) {
        std::int64_t oh0, oh1;
        tap_range(g.H, g.sh, g.pt, i * g.dh, g.OH, oh0, oh1);
        for (std::int64_t j = 0; j < g.kw; ++j) {
          std::int64_t ow0, ow1;
          tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, ow0, ow1);
          const T wv = w[((k * Cg + cl) * g.kh + i) * g.kw + j];
          for (std::int64_t oh = oh0; oh < oh1; ++oh) {
            T* row = out + (oh * g.sh - g.pt + i * g.dh) * g.W - g.pl + j * g.dw;
            const T* grow = go + oh * g.OW;
            for (std::int64_t ow = ow0; ow < ow1; ++ow) row[ow * g.sw] += wv * grow[ow];
          }
        }
      }
    }
  });
}

// One task per output channel k: the batch is summed inside the task in a fixed order,
// so grad-weight is deterministic without atomics.
template <typename T>
void conv2d_grad_weight_loops(const ConvGeom& g, const T* gy, const T* x, T* gw) {
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), HW = g.H * g.W, OHW = g.OH * g.OW;
  parallel_for(g.K, [&](std::int64_t k) {
    const std::int64_t c0 = (k / Kg) * Cg;
    for (std::int64_t c = 0; c < Cg; ++c) {
      for (std::int64_t i = 0; i < g.kh; ++i) {
        std::int64_t oh0, oh1;
        tap_range(g.H, g.sh, g.pt, i * g.dh, g.OH, oh0, oh1);
        for (std::int64_t j = 0; j < g.kw; ++j) {
          std::int64_t ow0, ow1;
          tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, ow0, ow1);
          T acc = 0;
          for (std::int64_t n = 0; n < g.N; ++n) {
            const T* in = x + (n * g.C + c0 + c) * HW;
            const T* go = gy + (n * g.K + k) * OHW;
            for (std::int64_t oh = oh0; oh < oh1; ++oh) {
              const T* row = in + (oh * g.sh - g.pt + i * g.dh) * g.W - g.pl + j * g.dw;
              const T* grow = go + oh * g.OW;
              for (std::int64_t ow = ow0; ow < ow1; ++ow) acc += grow[ow] * row[ow * g.sw];
            }
          }
          gw[((k * Cg + c) * g.kh + i) * g.kw + j] = acc;
        }
      }
    }
  });
}

}  // namespace convkit
