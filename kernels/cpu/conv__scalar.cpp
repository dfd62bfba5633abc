// Portable direct-convolution kernels (any CPU; the float64 path everywhere): the same
// tile templates over one-lane "vectors". A 4 x 8 tile keeps 32 partial sums in
// registers; the compiler may vectorise it for the baseline ISA.
#include "conv_tiles.h"
#include "vec_scalar.h"

namespace convkit {
namespace {

template <typename T>
ConvKernels<T> scalar_kernels(const char* direct_name, const char* gw_name) {
  using VT = VecScalar<T>;
  return {{direct_kernel<VT, 4, 8>(1.0f, 1.0f, direct_name)},
          {{&conv_gw_tile<VT, 4, 8>, 4, 8, 1.0f, gw_name}},
          &transpose<VT>};
}

}  // namespace

const ConvKernels<float>& conv_kernels_f32_scalar() {
  static const ConvKernels<float> kernels =
      scalar_kernels<float>("f32_conv_direct_4x8__scalar", "f32_conv_gw_4x8__scalar");
  return kernels;
}

const ConvKernels<double>& conv_kernels_f64_scalar() {
  static const ConvKernels<double> kernels =
      scalar_kernels<double>("f64_conv_direct_4x8__scalar", "f64_conv_gw_4x8__scalar");
  return kernels;
}

}  // namespace convkit
