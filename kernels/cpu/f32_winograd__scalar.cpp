// Portable float32 Winograd F(4x4, 3x3) tile transforms (f32_winograd.h), one channel a
// "vector"; the compiler may vectorise them for the baseline ISA.
#include "f32_winograd.h"
#include "vec_scalar.h"

namespace convkit {

const WinogradKernels& winograd_kernels_f32_scalar() {
  static const WinogradKernels kernels = winograd_kernels<VecScalar<float>>("f32_winograd_4x4_3x3__scalar");
  return kernels;
}

}  // namespace convkit
