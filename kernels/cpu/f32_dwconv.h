// Depthwise-convolution microkernels: the interface the operators (src/conv_depthwise*.cpp)
// call, one table per instruction set. A kernel sees only flat arrays and tap offsets, so
// one body serves every kernel size, stride, dilation and channel multiplier: the
// operator encodes all of them in the offsets.
//
// NCHW: vectors run over pixels of flattened planes (src/conv_planes.h). Output vector v
// covers flat pixels [v*lanes, (v+1)*lanes) and tap t reads the `lanes` consecutive values
// at planes + off[t] + v*lanes.
// NHWC: vectors run over channels, of the caller's array or of packed rows. Output pixel
// p, channel vector at lane c, tap t reads in[p*pix_step + off[t] + c], never past lane
// `channels` of a pixel; weights are w[t*ld + c] (ld a multiple of `lanes`, zeros past
// the real channels).
#pragma once
#include <cstdint>

#include "cpu_features.h"

namespace convkit {

// Where output vector v goes: its lanes whose bit is set in `keep` (the real output
// columns, not the plane's padding columns) are written, in order, to the `count`
// consecutive elements at out + dst. Built once per call by the operator; a kernel never
// writes anywhere else, so edges need no bounds tests.
struct DwStore {
  std::uint32_t keep;
  std::uint32_t count;
  std::int64_t dst;
};

struct DwKernels {
  int lanes;  // pixels per vector
  // out at map[v] <- relu?(bias + sum_t w[t] * planes[off[t] + v*lanes + lane]), v < nvec.
  void (*conv)(const float* planes, const std::int64_t* off, const float* w, std::int64_t taps, std::int64_t nvec,
               const DwStore* map, float bias, bool relu, float* out);
  // sums[t] += sum over v < nvec and lanes of gy[v*lanes + lane] * planes[off[t] + v*lanes + lane].
  void (*grad_weight)(const float* planes, const std::int64_t* off, std::int64_t taps, const float* gy,
                      std::int64_t nvec, float* sums);

  // NCHW, 3x3, dilation 1, stride S = 1 or 2 (index S - 1), reading one H x W plane x in
  // place (pt, pl: the padding before it): y[oh*OW + ow] for oh in [oh0, oh1), every ow <
  //   relu?(bias + sum over taps (i, j) inside the image of w[i*3 + j] * x[S*oh-pt+i][S*ow-pl+j]).
  void (*conv_3x3[2])(const float* x, std::int64_t H, std::int64_t W, std::int64_t pt, std::int64_t pl,
                      const float* w, float bias, bool relu, std::int64_t oh0, std::int64_t oh1, std::int64_t OW,
                      float* y);
  // Its grad-weight: sums[i*3 + j] += sum over oh in [oh0, oh1), ow < OW of
  //   gy[oh*OW + ow] * x[S*oh-pt+i][S*ow-pl+j] (zero outside the image).
  void (*grad_weight_3x3[2])(const float* x, std::int64_t H, std::int64_t W, std::int64_t pt, std::int64_t pl,
                             const float* gy, std::int64_t oh0, std::int64_t oh1, std::int64_t OW, float* sums);
  // Stride 2's grad-input: gx[ih*W + iw] for ih in [ih0, ih1), every iw < W, from m grad_output
  // planes gy + j*OH*OW (OH x OW) and weights w[j*9 + i*3 + jj], j < m:
  //   sum over j and taps (i, jj) with ih + pt - i = 2oh, iw + pl - jj = 2ow inside gy of
  //   w[j*9 + i*3 + jj] * gy[j*OH*OW + oh*OW + ow].
  void (*grad_input_3x3s2)(const float* gy, std::int64_t m, std::int64_t OH, std::int64_t OW, const float* w,
                           std::int64_t pt, std::int64_t pl, std::int64_t ih0, std::int64_t ih1, std::int64_t W,
                           float* gx);

  // dst[0, n) <- src[0, n) with streaming (non-temporal) stores where the ISA has them,
  // fenced before it returns.
  void (*stream_copy)(float* dst, const float* src, std::int64_t n);

  // NHWC, p < npix, c < channels: out[p*out_step + c] <-
  //   relu?(bias[c] + sum_t w[t*ld + c] * in[p*pix_step + off[t] + c]).
  void (*conv_nhwc)(const float* in, std::int64_t pix_step, const std::int64_t* off, const float* w,
                    std::int64_t taps, std::int64_t ld, const float* bias, bool relu, std::int64_t npix,
                    std::int64_t channels, float* out, std::int64_t out_step);
  // NHWC, c < channels: sums[t*ld + c] +=
  //   sum over p < npix of gy[p*gy_step + c] * in[p*pix_step + off[t] + c].
  void (*grad_weight_nhwc)(const float* in, std::int64_t pix_step, const std::int64_t* off, std::int64_t taps,
                           std::int64_t ld, const float* gy, std::int64_t gy_step, std::int64_t npix,
                           std::int64_t channels, float* sums);
};

// The kernels for an instruction set (the best one compiled in at or below `isa`).
const DwKernels& f32_dwconv_kernels(Isa isa);

extern const DwKernels f32_dwconv_4x16__avx512;
extern const DwKernels f32_dwconv_8x8__avx2;
extern const DwKernels f32_dwconv_4x8__scalar;

}  // namespace convkit
