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
// so NCHW and NHWC are the same call) into pg.phases() planes at dst, writing every
// element once: per phase plane one copy_strided of the image's rows and columns that fall
// in it, and zeros around them (per-row bookkeeping measured 1.3x slower on stride-2
// 56-wide images; zero-filling whole planes before copying, 1.5x slower on stride-1 ones).
template <typename T>
void pack_planes(const T* src, std::int64_t row_stride, std::int64_t col_stride, std::int64_t H, std::int64_t W,
                 const PlaneGeom& pg, T* dst) {
  for (std::int64_t a = 0; a < pg.sh; ++a) {
    // Padded row qh*sh + a is image row qh*sh + a - pt: inside for qh in [qh0, qh1).
    const std::int64_t qh0 = std::min(pg.Hq, std::max<std::int64_t>(0, (pg.pt - a + pg.sh - 1) / pg.sh));
    const std::int64_t qh1 = std::max(qh0, std::min<std::int64_t>(pg.Hq, (H + pg.pt - a + pg.sh - 1) / pg.sh));
    for (std::int64_t b = 0; b < pg.sw; ++b) {
      // Padded column qw*sw + b is image column qw*sw + b - pl: inside for qw in [qw0, qw1).
      const std::int64_t qw0 = std::min(pg.Wq, std::max<std::int64_t>(0, (pg.pl - b + pg.sw - 1) / pg.sw));
      const std::int64_t qw1 = std::max(qw0, std::min<std::int64_t>(pg.Wq, (W + pg.pl - b + pg.sw - 1) / pg.sw));
      T* plane = dst + (a * pg.sw + b) * pg.size;
      if (qh0 == qh1 || qw0 == qw1) {
        std::fill(plane, plane + pg.size, T(0));
        continue;
      }
      std::fill(plane, plane + qh0 * pg.Wq + qw0, T(0));
      copy_strided(src + (qh0 * pg.sh + a - pg.pt) * row_stride + (qw0 * pg.sw + b - pg.pl) * col_stride,
                   pg.sh * row_stride, pg.sw * col_stride, qw1 - qw0, qh1 - qh0, plane + qh0 * pg.Wq + qw0, pg.Wq);
      // Between two copied rows: the first row's columns from qw1, the next one's before qw0
      // (a few elements; rows innermost, so the compiler cannot make each gap a memset call,
      // which measured 1.2x slower for a whole stride-2 pack).
      T* gaps = plane + qh0 * pg.Wq + qw1;
      for (std::int64_t i = 0; i < pg.Wq - qw1 + qw0; ++i)
        for (std::int64_t r = 0; r + 1 < qh1 - qh0; ++r) gaps[r * pg.Wq + i] = T(0);
      std::fill(plane + (qh1 - 1) * pg.Wq + qw1, plane + pg.size, T(0));
    }
  }
}

}  // namespace convkit
