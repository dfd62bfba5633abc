// The kernel tables of the active ISA. Each per-ISA table is a function-local static,
// filled once on first use; the lookup per operator call is one switch, so
// convkit.set_isa() takes effect on the next call.
#include "conv_tile.h"

#include <mutex>

namespace convkit {
namespace {

std::mutex forced_mutex;
std::string forced_direct, forced_gw;
int forced_fold = -1;

}  // namespace

void force_conv_kernels(const std::string& direct, const std::string& gw, int fold) {
  std::lock_guard<std::mutex> lock(forced_mutex);
  forced_direct = direct;
  forced_gw = gw;
  forced_fold = fold;
}

int forced_conv_fold() {
  std::lock_guard<std::mutex> lock(forced_mutex);
  return forced_fold;
}

std::string forced_conv_kernel(bool gw) {
  std::lock_guard<std::mutex> lock(forced_mutex);
  return gw ? forced_gw : forced_direct;
}

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
