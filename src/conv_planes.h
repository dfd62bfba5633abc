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

// Rows of strided elements, one column phase of a block of image rows: element i of row r
// moves from in[r*in_stride + i*step] to out[r*out_stride + i]. Stride 2 is a compile-time
// step so the compiler vectorises the deinterleave. (An AVX-512 version, permutes with
// masked loads at the row ends, measured 1.4x slower on a stride-2 layer's 14 MB input.)
template <typename T>
void copy_strided(const T* in, std::int64_t in_stride, std::int64_t step, std::int64_t n, std::int64_t rows, T* out,
                  std::int64_t out_stride) {
  for (std::int64_t r = 0; r < rows; ++r, in += in_stride, out += out_stride) {
    if (step == 1) {
      std::memcpy(out, in, sizeof(T) * static_cast<std::size_t>(n));
    } else if (step == 2) {
      for (std::int64_t i = 0; i < n; ++i) out[i] = in[2 * i];
    } else {
      for (std::int64_t i = 0; i < n; ++i) out[i] = in[i * step];
    }
  }
}

// Packs one channel of an H x W image (element (h, w) at src[h*row_stride + w*col_stride],
// so NCHW and NHWC are the same call) into pg.phases() planes at dst: zeros everywhere,
// then one copy_strided per phase plane of the image's rows and columns that fall in it
// (per-row bookkeeping measured 1.3x slower on stride-2 56-wide images).
template <typename T>
void pack_planes(const T* src, std::int64_t row_stride, std::int64_t col_stride, std::int64_t H, std::int64_t W,
                 const PlaneGeom& pg, T* dst) {
  std::fill(dst, dst + pg.channel_size(), T(0));
  for (std::int64_t a = 0; a < pg.sh; ++a) {
    // Padded row qh*sh + a is image row qh*sh + a - pt: inside for qh in [qh0, qh1).
    const std::int64_t qh0 = std::min(pg.Hq, std::max<std::int64_t>(0, (pg.pt - a + pg.sh - 1) / pg.sh));
    const std::int64_t qh1 = std::max(qh0, std::min<std::int64_t>(pg.Hq, (H + pg.pt - a + pg.sh - 1) / pg.sh));
    for (std::int64_t b = 0; b < pg.sw; ++b) {
      // Padded column qw*sw + b is image column qw*sw + b - pl: inside for qw in [qw0, qw1).
      const std::int64_t qw0 = std::min(pg.Wq, std::max<std::int64_t>(0, (pg.pl - b + pg.sw - 1) / pg.sw));
      const std::int64_t qw1 = std::max(qw0, std::min<std::int64_t>(pg.Wq, (W + pg.pl - b + pg.sw - 1) / pg.sw));
      if (qh0 == qh1 || qw0 == qw1) continue;
      copy_strided(src + (qh0 * pg.sh + a - pg.pt) * row_stride + (qw0 * pg.sw + b - pg.pl) * col_stride, pg.sh * row_stride,
                   pg.sw * col_stride, qw1 - qw0, qh1 - qh0, dst + (a * pg.sw + b) * pg.size + qh0 * pg.Wq + qw0, pg.Wq);
    }
  }
}

}  // namespace convkit
