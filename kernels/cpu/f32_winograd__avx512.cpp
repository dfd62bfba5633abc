// avx512 float32 Winograd F(4x4, 3x3) tile transforms (f32_winograd.h), 16 channels a vector.
#include "f32_winograd.h"
#include "vec_avx512.h"

namespace convkit {

const WinogradKernels& winograd_kernels_f32_avx512() {
  static const WinogradKernels kernels = winograd_kernels<VecAvx512F32>("f32_winograd_4x4_3x3__avx512");
  return kernels;
}

}  // namespace convkit
