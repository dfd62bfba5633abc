// The pooling operators: pick the kernel table for the dtype and ISA, cut the call into
// tasks, run them on the thread pool. Arrays are C-contiguous in `layout`; PoolGeom holds
// NCHW sizes whatever the layout, already finalize()d.
#pragma once
#include <cstdint>

#include "pool_geometry.h"

namespace convkit {

enum class PoolLayout { nchw, nhwc };

// y: (N, C, OH, OW) in layout; idx: the same shape, flat h*W + w within each plane, or
// nullptr when the caller does not want them (the kernel then skips computing them).
template <typename T>
void max_pool2d_forward(const PoolGeom& g, PoolLayout layout, const T* x, T* y, std::int64_t* idx);

// grad_output scattered to the saved indices (negative ones are skipped, as for windows
// that held only padding); an index >= H*W throws std::invalid_argument.
template <typename T>
void max_pool2d_backward(const PoolGeom& g, PoolLayout layout, const T* gy, const std::int64_t* idx, T* gx);

template <typename T>
void avg_pool2d_forward(const PoolGeom& g, PoolLayout layout, const T* x, T* y);
template <typename T>
void avg_pool2d_backward(const PoolGeom& g, PoolLayout layout, const T* gy, T* gx);

// Maxout: the max over each group of k consecutive channels, x (N, C, H, W) -> y
// (N, C/k, H, W) in layout; ties take the first channel, NaN propagates. The backward
// routes grad_output to that channel, recomputed from x. Both run the max-pool kernels on
// a view of x in which each channel group is a pooling window. Throws
// std::invalid_argument unless k >= 1 divides C.
template <typename T>
void maxout2d_forward(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t k,
                      PoolLayout layout, const T* x, T* y);
template <typename T>
void maxout2d_backward(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t k,
                       PoolLayout layout, const T* gy, const T* x, T* gx);

}  // namespace convkit
