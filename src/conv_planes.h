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
  pg.size = ((pg.Hq + 1) * pg.Wq + overrun + 15) / 16 * 16;
  return pg;
}

// Packs one channel of an H x W image (element (h, w) at src[h*row_stride + w*col_stride],
// so NCHW and NHWC are the same call) into pg.phases() planes at dst.
template <typename T>
void pack_planes(const T* src, std::int64_t row_stride, std::int64_t col_stride, std::int64_t H, std::int64_t W,
                 const PlaneGeom& pg, T* dst) {
  for (std::int64_t a = 0; a < pg.sh; ++a) {
    for (std::int64_t b = 0; b < pg.sw; ++b) {
      T* plane = dst + (a * pg.sw + b) * pg.size;
      std::fill(plane, plane + pg.size, T(0));
      // Padded row qh*sh + a is image row h = qh*sh + a - pt; same for columns.
      const std::int64_t qw0 = std::max<std::int64_t>(0, (pg.pl - b + pg.sw - 1) / pg.sw);
      const std::int64_t qw1 = std::min<std::int64_t>(pg.Wq, (W + pg.pl - b + pg.sw - 1) / pg.sw);
      if (qw0 >= qw1) continue;
      for (std::int64_t qh = 0; qh < pg.Hq; ++qh) {
        const std::int64_t h = qh * pg.sh + a - pg.pt;
        if (h < 0 || h >= H) continue;
        const T* row = src + h * row_stride;
        T* out = plane + qh * pg.Wq;
        const std::int64_t w0 = qw0 * pg.sw + b - pg.pl;
        if (pg.sw == 1 && col_stride == 1) {
          std::memcpy(out + qw0, row + w0, sizeof(T) * static_cast<std::size_t>(qw1 - qw0));
        } else {
          const std::int64_t step = pg.sw * col_stride;
          const T* in = row + w0 * col_stride;
          for (std::int64_t qw = qw0; qw < qw1; ++qw, in += step) out[qw] = *in;
        }
      }
    }
  }
}

}  // namespace convkit
