// The kernel tables of the active ISA. Each per-ISA table is a function-local static,
// filled once on first use; the lookup per operator call is one switch, so
// convkit.set_isa() takes effect on the next call.
#include "conv_tile.h"

namespace convkit {

template <>
const ConvKernels<float>& conv_kernels<float>() {
  switch (active_isa()) {
#ifdef CONVKIT_X86
    case Isa::avx512: return conv_kernels_f32_avx512();
    case Isa::avx2: return conv_kernels_f32_avx2();
#endif
    default: return conv_kernels_f32_scalar();
  }
}

// float64 is the exact-checks dtype: portable kernels on every ISA.
template <>
const ConvKernels<double>& conv_kernels<double>() {
  return conv_kernels_f64_scalar();
}

}  // namespace convkit
