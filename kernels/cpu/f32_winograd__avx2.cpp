// avx2 float32 Winograd F(4x4, 3x3) tile transforms (f32_winograd.h), 8 channels a vector.
#include "f32_winograd.h"
#include "vec_avx2.h"

namespace convkit {

const WinogradKernels& winograd_kernels_f32_avx2() {
  static const WinogradKernels kernels = winograd_kernels<VecAvx2F32>("f32_winograd_4x4_3x3__avx2");
  return kernels;
}

}  // namespace convkit
