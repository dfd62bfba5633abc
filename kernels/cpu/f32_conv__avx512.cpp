// AVX-512 float32 direct-convolution kernels: the tile shapes of conv_tiles.h offered on
// AVX-512 machines (32 zmm registers), with their measured efficiency (fraction of one
// core's FMA peak on a large 3x3 layer, Zen 5) for the operators' tile choice.
//
// Direct R x P: 8x48 and 4x96 reach 92% (V + R = 11 / 10 loads per 24 FMAs); wider-R
// shapes suit many channels on small images, narrow-R ones few output channels (they
// are load-bound: 1x256 does one unaligned load per FMA, 37%, still the best for K = 1).
// With the weights read in place (the second figure: grad-input of Inception's 1x7 on
// 17 x 17 and of ResNet's 256-channel 3x3 on 14 x 14, one thread, relative to 8x48),
// 5x80 ran 5-7% faster than 8x48, 6x64 1-7%, 4x96 3-7% slower; the shapes not measured
// there keep 8x48's ratio.
// Grad-weight R x KB: 6 entries x 64 channels and 12 x 32 reach 88%; 12 x 16 serves
// layers with at most 16 output channels.
#include "conv_tiles.h"
#include "vec_avx512.h"

namespace convkit {

const ConvKernels<float>& conv_kernels_f32_avx512() {
  using VT = VecAvx512F32;
  static const ConvKernels<float> kernels{
      {
          direct_kernel<VT, 8, 3>(0.92f, 0.80f, "f32_conv_direct_8x48__avx512"),
          direct_kernel<VT, 4, 6>(0.90f, 0.76f, "f32_conv_direct_4x96__avx512"),
          direct_kernel<VT, 6, 4>(0.89f, 0.83f, "f32_conv_direct_6x64__avx512"),
          direct_kernel<VT, 5, 5>(0.89f, 0.85f, "f32_conv_direct_5x80__avx512"),
          direct_kernel<VT, 12, 2>(0.81f, 0.70f, "f32_conv_direct_12x32__avx512"),
          direct_kernel<VT, 3, 8>(0.66f, 0.57f, "f32_conv_direct_3x128__avx512"),
          direct_kernel<VT, 2, 12>(0.48f, 0.42f, "f32_conv_direct_2x192__avx512"),
          direct_kernel<VT, 1, 16>(0.37f, 0.32f, "f32_conv_direct_1x256__avx512"),
      },
      {
          {&conv_gw_tile<VT, 6, 4>, 6, 64, 0.88f, "f32_conv_gw_6x64__avx512"},
          {&conv_gw_tile<VT, 12, 2>, 12, 32, 0.88f, "f32_conv_gw_12x32__avx512"},
          {&conv_gw_tile<VT, 12, 1>, 12, 16, 0.45f, "f32_conv_gw_12x16__avx512"},
      },
      &transpose<VT>,
  };
  return kernels;
}

}  // namespace convkit
