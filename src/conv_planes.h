// Padded, stride-phase-split, flattened image planes: the input layout of the direct
// kernels, for forward and grad-input alike.
//
// Why: a convolution with stride s and dilation d reads input row oh*s + i*d for output
// row oh and tap i. Split the zero-padded image into s*s phase planes,
//     plane[a][b][qh][qw] = xpad[qh*s + a][qw*s + b],
// and flatten each plane with row width Wq. Output pixel (oh, ow) is flat index
// p = oh*Wq + ow, and tap (i, j) reads plane (i*d % s, j*d % s) at p + off(i, j) with
//     off(i, j) = (i*d / s) * Wq + (j*d / s).
// Every tap of every stride and dilation becomes one contiguous, unit-stride read at a
// fixed offset: the microkernels only ever load consecutive pixels, there are no bounds
// tests in the hot loop (the padding is real zeros), and dilation costs nothing extra.
// Columns ow in [OW, Wq) of each flat output row are computed and discarded (waste
// (Wq - OW) / Wq: 3% on a 56-wide 3x3 layer); reads past the last row land in `slack`.
//
// Grad-input uses the same planes (of grad_output, stride 1, padded so that every tap
// reads forward): see conv_direct.cpp.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "conv_geometry.h"
#include "workspace.h"

namespace convkit {

struct PlaneGeom {
  std::int64_t sh, sw;    // phases per dimension (the stride)
  std::int64_t pt, pl;    // zeros before the image (top, left) in the padded image
  std::int64_t Hq, Wq;    // rows and columns of each phase plane
  std::int64_t size;      // elements per (channel, phase) plane, slack included, multiple of 16

  std::int64_t phases() const { return sh * sw; }
  std::int64_t channel_size() const { return phases() * size; }
  // Offset of tap (ih, jw) = (i*dh, j*dw), the tap's distance from the window's corner.
  std::int64_t phase_of(std::int64_t ih, std::int64_t jw) const { return (ih % sh) * sw + (jw % sw); }
  std::int64_t offset_of(std::int64_t ih, std::int64_t jw) const {
    return phase_of(ih, jw) * size + (ih / sh) * Wq + (jw / sw);
  }
};

// Planes for an image of Hp x Wp padded pixels (pt/pl of them zeros before the image),
// read at flat output indices up to `overrun` past the last output row, at any tap
// offset: a tap's column offset is < Wq, so one spare row plus `overrun` covers it.
inline PlaneGeom make_plane_geom(std::int64_t Hp, std::int64_t Wp, std::int64_t pt, std::int64_t pl,
                                 std::int64_t sh, std::int64_t sw, std::int64_t overrun) {
  PlaneGeom pg{sh, sw, pt, pl, (Hp + sh - 1) / sh, (Wp + sw - 1) / sw, 0};
  pg.size = (buffer_size({pg.Hq + 1, pg.Wq}) + overrun + 15) / 16 * 16;
  buffer_size({pg.phases(), pg.size});  // channel_size() fits in int64 (or std::bad_alloc)
  return pg;
}

// Whether padded stride-phase planes pay for a geometry: not when the stride outgrows the
// image (sh*sw phases, nearly all empty) or the padding dwarfs it (planes of zeros). Both
// are valid calls (a stride or padding up to 2^31) that would ask for gigabytes, or more
// than int64 counts, to compute a few pixels; they run the plain loops instead
// (conv_reference_loops.h), which read the image in place.
inline bool planes_pay_off(const ConvGeom& g) {
  const double image = double(g.H) * double(g.W);
  const double padded = double(g.H + g.pt + g.pb) * double(g.W + g.pl + g.pr);
  return double(g.sh) * double(g.sw) <= image && padded <= std::max(64.0 * image, 65536.0);
}

// Packs a strided window of one channel of an H x W image (element (h, w) at
// src[h*row_stride + w*col_stride]) into rows x cols at dst, zeros outside the image:
//   dst[r*cols + t] = image[row0 + r*row_step][col0 + t*col_step].
// Every plane layout here is windows: a stride phase is the window (a - pt, sh) x
// (b - pl, sw) of the padded image; a folded tap column (conv_direct.cpp) is
// (a - pt, sh) x (j*dw - pl, sw), exactly OW wide.
template <typename T>
void pack_window(const T* src, std::int64_t row_stride, std::int64_t col_stride, std::int64_t H, std::int64_t W,
                 std::int64_t row0, std::int64_t row_step, std::int64_t rows, std::int64_t col0,
                 std::int64_t col_step, std::int64_t cols, T* dst) {
  // Columns t in [t0, t1) fall inside the image: 0 <= col0 + t*col_step < W; rows r in
  // [r0, r1) likewise.
  const std::int64_t t0 = std::min(cols, col0 >= 0 ? 0 : (-col0 + col_step - 1) / col_step);
  const std::int64_t t1 = std::max(t0, std::min(cols, col0 >= W ? 0 : (W - 1 - col0) / col_step + 1));
  const std::int64_t r0 = std::min(rows, row0 >= 0 ? 0 : (-row0 + row_step - 1) / row_step);
  const std::int64_t r1 = t0 == t1 ? r0 : std::max(r0, std::min(rows, row0 >= H ? 0 : (H - 1 - row0) / row_step + 1));
  if (r0 == r1) {
    for (std::int64_t i = 0; i < rows * cols; ++i) dst[i] = T(0);
    return;
  }
  // Zeros before the first copied element and after the last; between two copied rows,
  // the few columns from t1 and before t0, rows innermost. Plain loops: windows are often
  // narrow (17 columns), and a library call per row cost more than the copy (measured 2x
  // on Inception's 1x7); zero loops per row cost a depthwise stride-2 layer 20%.
  for (T* z = dst; z < dst + r0 * cols + t0; ++z) *z = T(0);
  const std::int64_t n = t1 - t0, step = col_step * col_stride;
  const T* in = src + (row0 + r0 * row_step) * row_stride + (col0 + t0 * col_step) * col_stride;
  if (step == 1 && row_step * row_stride == cols) {
    // Source rows as far apart as the window's (stride 1, NCHW, the window as wide as
    // the image: Inception's 1x7 folded): the copied rows and the few columns between
    // them are one run, copied at once, the columns between zeroed below. Row by row,
    // 17-element copies cost a fifth of the Inception forward.
    T* out = dst + r0 * cols + t0;
    for (std::int64_t i = 0; i < (r1 - r0 - 1) * cols + n; ++i) out[i] = in[i];
  } else {
    for (std::int64_t r = r0; r < r1; ++r, in += row_step * row_stride) {
      T* out = dst + r * cols + t0;
      // Step 2 (stride-2 phases of NCHW) as a compile-time step, so the compiler
      // vectorises the deinterleave (measured on the depthwise stride-2 layer).
      if (step == 1)
        for (std::int64_t t = 0; t < n; ++t) out[t] = in[t];
      else if (step == 2)
        for (std::int64_t t = 0; t < n; ++t) out[t] = in[2 * t];
      else
        for (std::int64_t t = 0; t < n; ++t) out[t] = in[t * step];
    }
  }
  T* gaps = dst + r0 * cols + t1;
  for (std::int64_t i = 0; i < cols - n; ++i)
    for (std::int64_t r = 0; r + 1 < r1 - r0; ++r) gaps[r * cols + i] = T(0);
  for (T* z = dst + (r1 - 1) * cols + t1; z < dst + rows * cols; ++z) *z = T(0);
}

// Packs one channel of an H x W image (element (h, w) at src[h*row_stride + w*col_stride],
// so NCHW and NHWC are the same call) into pg.phases() planes at dst.
template <typename T>
void pack_planes(const T* src, std::int64_t row_stride, std::int64_t col_stride, std::int64_t H, std::int64_t W,
                 const PlaneGeom& pg, T* dst) {
  for (std::int64_t a = 0; a < pg.sh; ++a) {
    for (std::int64_t b = 0; b < pg.sw; ++b) {
      T* plane = dst + (a * pg.sw + b) * pg.size;
      pack_window(src, row_stride, col_stride, H, W, a - pg.pt, pg.sh, pg.Hq, b - pg.pl, pg.sw, pg.Wq, plane);
      std::fill(plane + pg.Hq * pg.Wq, plane + pg.size, T(0));  // the slack read past the last row
    }
  }
}

}  // namespace convkit
