// AVX2 + FMA float32 direct-convolution kernels (16 ymm registers), with their measured
// efficiency (fraction of one core's FMA peak, large 3x3 layer) for the tile choice.
// 4x24 and 6x16 reach 90%; 1x64 (one load per FMA, 50%) serves single-channel outputs.
// With the weights read in place (the second figure; see f32_conv__avx512.cpp) 4x24
// stays ahead of 6x16 (grad-input of Inception's 1x7 +7%, ResNet's 14 x 14 +17%).
#include "conv_tiles.h"
#include "vec_avx2.h"

namespace convkit {

const ConvKernels<float>& conv_kernels_f32_avx2() {
  using VT = VecAvx2F32;
  static const ConvKernels<float> kernels{
      {
          direct_kernel<VT, 4, 3>(0.90f, 0.78f, "f32_conv_direct_4x24__avx2"),
          direct_kernel<VT, 6, 2>(0.88f, 0.77f, "f32_conv_direct_6x16__avx2"),
          direct_kernel<VT, 1, 8>(0.50f, 0.44f, "f32_conv_direct_1x64__avx2"),
      },
      {
          {&conv_gw_tile<VT, 4, 3>, 4, 24, 0.85f, "f32_conv_gw_4x24__avx2"},
          {&conv_gw_tile<VT, 6, 2>, 6, 16, 0.85f, "f32_conv_gw_6x16__avx2"},
          {&conv_gw_tile<VT, 12, 1>, 12, 8, 0.45f, "f32_conv_gw_12x8__avx2"},
      },
      &transpose<VT>,
  };
  return kernels;
}

}  // namespace convkit
