// The direct-convolution operators: pick a kernel for the geometry, dtype and ISA, and
// run it on the thread pool. Arrays are NCHW, C-contiguous; weights (K, C/groups, kh, kw).
#pragma once
#include "conv_geometry.h"

namespace convkit {

template <typename T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, bool relu, T* y);
template <typename T>
void conv2d_grad_input(const ConvGeom& g, const T* gy, const T* w, T* gx);
template <typename T>
void conv2d_grad_weight(const ConvGeom& g, const T* gy, const T* x, T* gw);

}  // namespace convkit
