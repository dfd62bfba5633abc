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

// n elements `step` apart at `in` to n consecutive ones at `out`: one row of one column
// phase. The step is a compile-time constant for stride 2 so the compiler vectorises the
// deinterleave; kernel tables offer faster SIMD versions (DwKernels::copy_strided).
template <typename T>
using StridedCopy = void (*)(const T* in, std::int64_t step, std::int64_t n, T* out);

template <typename T>
void copy_strided(const T* in, std::int64_t step, std::int64_t n, T* out) {
  if (step == 1) {
    std::memcpy(out, in, sizeof(T) * static_cast<std::size_t>(n));
  } else if (step == 2) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = in[2 * i];
  } else {
    for (std::int64_t i = 0; i < n; ++i) out[i] = in[i * step];
  }
}

// Packs one channel of an H x W image (element (h, w) at src[h*row_stride + w*col_stride],
// so NCHW and NHWC are the same call) into pg.phases() planes at dst. Every element of
// the planes is written once (zeros around the image). The image is read in memory
// order, row after row, once per column phase (a row's later phases then come from L1),
// so the hardware prefetcher streams it: packing costs about one copy of the image.
// `copy` moves one row of one column phase (see copy_strided).
template <typename T>
void pack_planes(const T* src, std::int64_t row_stride, std::int64_t col_stride, std::int64_t H, std::int64_t W,
                 const PlaneGeom& pg, T* dst, StridedCopy<T> copy = &copy_strided<T>) {
  const std::int64_t step = pg.sw * col_stride;
  for (std::int64_t b = 0; b < pg.sw; ++b) {
    // Padded column qw*sw + b is image column qw*sw + b - pl: inside for qw in [qw0, qw1).
    const std::int64_t qw0 = std::min(pg.Wq, std::max<std::int64_t>(0, (pg.pl - b + pg.sw - 1) / pg.sw));
    const std::int64_t qw1 = std::max(qw0, std::min<std::int64_t>(pg.Wq, (W + pg.pl - b + pg.sw - 1) / pg.sw));
    const T* col0 = src + (qw0 * pg.sw + b - pg.pl) * col_stride;
    for (std::int64_t qh = 0; qh < pg.Hq; ++qh) {
      for (std::int64_t a = 0; a < pg.sh; ++a) {
        T* out = dst + (a * pg.sw + b) * pg.size + qh * pg.Wq;
        const std::int64_t h = qh * pg.sh + a - pg.pt;  // padded row qh*sh + a is image row h
        if (h < 0 || h >= H || qw0 == qw1) {
          std::fill(out, out + pg.Wq, T(0));
          continue;
        }
        std::fill(out, out + qw0, T(0));
        copy(col0 + h * row_stride, step, qw1 - qw0, out + qw0);
        std::fill(out + qw1, out + pg.Wq, T(0));
      }
    }
  }
  for (std::int64_t p = 0; p < pg.phases(); ++p)
    std::fill(dst + p * pg.size + pg.Hq * pg.Wq, dst + (p + 1) * pg.size, T(0));
}

}  // namespace convkit
