// The pooling kernels of one dtype and instruction set, as a table the operator
// (pool.cpp) picks by active_isa(). Each kernel file fills one table from the same
// templates (kernels/cpu/pool_kernels.h), compiled with its own ISA flags.
#pragma once
#include <cstdint>

#include "pool_geometry.h"

namespace convkit {

// The part of a call one task computes. Tasks never share an output element, so they
// run in any order on any thread with bit-identical results.
//   NCHW kernels: plane `plane` (= n*C + c), rows [r0, r1) of it: output rows forward,
//                 input rows for the average backward.
//   NHWC kernels: image `plane` (= n), rows [r0, r1) as above, channels [c0, c1).
//   global NCHW kernels: planes [r0, r1).
struct PoolTask {
  std::int64_t plane, r0, r1, c0, c1;
};

template <typename T>
struct PoolArrays {
  const T* in;        // x forward, grad_output backward (C-contiguous, the call's layout)
  T* out;             // y forward, grad_input backward
  std::int64_t* idx;  // max forward: flat indices within each H*W plane, or nullptr
  const T* inv_h;     // average: 1 / divisor factor of each output row (OH values)
  const T* inv_w;     //          and of each output column (OW values)
  const Range* cover_h;  // average backward: the outputs covering each input row (H ranges)
  const Range* cover_w;  //                   and each input column (W ranges)
};

template <typename T>
using PoolKernel = void (*)(const PoolGeom&, const PoolArrays<T>&, const PoolTask&);

template <typename T>
struct PoolKernels {
  PoolKernel<T> max_nchw, max_nchw_idx, avg_nchw;      // windows, NCHW
  PoolKernel<T> max_nhwc, max_nhwc_idx, avg_nhwc;      // windows, NHWC (also global NHWC)
  PoolKernel<T> global_max_nchw, global_max_nchw_idx;  // one window = one whole plane
  PoolKernel<T> global_avg_nchw, global_avg_backward_nchw;
  PoolKernel<T> avg_backward_nchw, avg_backward_nhwc;  // grad_output spread over windows
};

extern const PoolKernels<float> f32_pool_kernels__scalar;
extern const PoolKernels<double> f64_pool_kernels__scalar;
#ifdef CONVKIT_X86
extern const PoolKernels<float> f32_pool_kernels__avx2;
extern const PoolKernels<float> f32_pool_kernels__avx512;
#endif

}  // namespace convkit
