// Portable pooling kernels: the one-lane vector of pool_kernels.h. The float32 fallback
// on CPUs without AVX2 (or CONVKIT_ISA=scalar), and the float64 path everywhere.
#include "pool_kernels.h"

namespace convkit {

const PoolKernels<float> f32_pool_kernels__scalar = pool_kernel_table<Scalar<float>>();
const PoolKernels<double> f64_pool_kernels__scalar = pool_kernel_table<Scalar<double>>();

}  // namespace convkit
