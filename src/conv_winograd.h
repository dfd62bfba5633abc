// Winograd F(4x4, 3x3) convolution (algo="winograd"): float32, groups == 1, NCHW and
// NHWC. Each 4x4 block of outputs costs 36 multiplies per (input, output channel) pair
// instead of 144 for a 3x3 kernel: the input tiles and the weights are transformed into
// 36 "positions", multiplied there as 36 independent matrix products [tiles x C] x
// [C x K] (the direct engine's register-tiled FMA kernel), and the products transformed
// back (see src/conv_winograd.cpp). Grad-weight runs F(3x3, 4x4) on the same tiles (see
// winograd_grad_weight).
//
// Dilation d keeps the method: the outputs (y, x) with the same (y mod dh, x mod dw)
// form an ordinary 3x3 stride-1 convolution over the input pixels of that sub-grid,
// so a tile is 4x4 outputs spaced dh rows and dw columns apart.
//
// Stride s turns into channels ("phase space", space-to-depth): output o reads input
// pixels s*o + t - pad, and with t = s*i + r those are pixel o + i (shifted) of the
// input's phase r, the sub-image of its pixels s*m + r. Stacking the s*s phases as
// channels (C -> s*s*C) makes the layer a stride-1 convolution whose kernel has
// ceil(k / s) taps per axis (one more when the padding is not a multiple of s), its
// tap i of phase r being the kernel's tap s*i + r (zero past the kernel). When that is
// at most 3 it is a (zero-padded) 3x3 stride-1 convolution: AlexNet's 11x11 stride-4
// conv1 becomes 48 channels of 3x3, 108 multiplies per output instead of 363. The
// grad-input is the same in reverse, its output split back from phase space (which
// makes conv_transpose2d's forward, a conv2d grad-input, covered alike).
#pragma once
#include <cstdint>

#include "conv_geometry.h"
#include "conv_layout.h"

namespace convkit {

// The offset of a stride-s kernel's first phase-space tap from its first tap, padding p
// before the input, in (-s, 0]: pixel 0 of the input's phase 0 is the input's pixel 0.
inline std::int64_t winograd_phase_base(std::int64_t p, std::int64_t s) { return p % s ? p % s - s : 0; }

// Taps of a stride-s kernel of k taps per axis in phase space.
inline std::int64_t winograd_phase_taps(std::int64_t k, std::int64_t s, std::int64_t p) {
  return (k - winograd_phase_base(p, s) + s - 1) / s;
}

// Whether the Winograd operators compute this geometry (the bindings refuse the rest):
// at most 3 phase-space taps per axis, groups == 1, and dilation only at stride 1.
inline bool winograd_covers(const ConvGeom& g) {
  const bool dilated = g.dh != 1 || g.dw != 1, strided = g.sh != 1 || g.sw != 1;
  return g.groups == 1 && !(dilated && strided) && winograd_phase_taps(g.kh, g.sh, g.pt) <= 3 &&
         winograd_phase_taps(g.kw, g.sw, g.pl) <= 3;
}

// y = conv2d(x, w) + bias, then ReLU if asked (g covered, see above).
void winograd_forward(const ConvGeom& g, Layout layout, const float* x, const float* w, const float* bias, bool relu,
                      float* y);
// grad_x of conv2d for grad_y: itself a 3x3 stride-1 convolution of grad_y with the
// weights turned 180 degrees and C and K swapped.
void winograd_grad_input(const ConvGeom& g, Layout layout, const float* gy, const float* w, float* gx);

// grad_w of conv2d for grad_y and x (the same geometries): F(3x3, 4x4) over the
// forward's 4x4 output tiles, 36 multiplies per tile and (phase) channel pair instead of
// 144 (see src/conv_winograd.cpp).
void winograd_grad_weight(const ConvGeom& g, Layout layout, const float* gy, const float* x, float* gw);

// ---- the kernels' contract (kernels/cpu/f32_winograd.h), one table per ISA ----

// Weight transform of n kernels (n a multiple of W): tap t = 3*i + j of kernel o is
// src[t*tap_stride + o] (tap_stride may be negative: a kernel read turned by 180
// degrees); transform position p goes to dst[p*dst_ld + o].
using WinogradWeightFn = void (*)(const float* src, std::int64_t tap_stride, std::int64_t n, float* dst,
                                  std::int64_t dst_ld);
// Input transform of one tile, nc channels (a multiple of the kernel's W): src[6*i + j]
// points at the channels of the tile's input pixel (i, j) (a zero run for padding);
// transform position p of channel c goes to dst[p*dst_ld + c].
using WinogradInputFn = void (*)(const float* const* src, std::int64_t nc, float* dst, std::int64_t dst_ld);
// Output transform of one tile, nk channels: position p of channel k is read at
// src[p*src_ld + k] (src holds at least nk rounded up to W channels, as does bias if
// not null); output pixel (a, b) of the tile, plus bias, ReLU'd if asked, goes to
// dst[4*a + b][k*k_stride] for k < nk, or nowhere if dst[4*a + b] is null.
using WinogradOutputFn = void (*)(const float* src, std::int64_t src_ld, std::int64_t nk, const float* bias, bool relu,
                                  float* const* dst, std::int64_t k_stride);

// Grad-weight's F(3x3, 4x4), one tile of grad_output as the kernel: src[4*a + b] points
// at the nk channels (a multiple of W) of its output pixel (a, b) (a zero run outside
// grad_output); transform position p of channel k goes to dst[p*dst_ld + k].
using WinogradGradOutputFn = void (*)(const float* const* src, std::int64_t nk, float* dst, std::int64_t dst_ld);
// Grad-weight's output transform for n sums (n a multiple of W): position p of sum o is
// src[p*src_ld + o]; the 3x3 weight gradient's tap t = 3*i + j goes to dst[t*dst_ld + o].
using WinogradWeightGradFn = void (*)(const float* src, std::int64_t src_ld, std::int64_t n, float* dst,
                                      std::int64_t dst_ld);

struct WinogradKernels {
  WinogradWeightFn weight;
  WinogradInputFn input;
  WinogradOutputFn output;
  WinogradGradOutputFn grad_output;
  WinogradWeightGradFn weight_grad;
  int W;  // channels per vector
  const char* name;
};

const WinogradKernels& winograd_kernels_f32_scalar();
#ifdef CONVKIT_X86
const WinogradKernels& winograd_kernels_f32_avx2();
const WinogradKernels& winograd_kernels_f32_avx512();
#endif

}  // namespace convkit
